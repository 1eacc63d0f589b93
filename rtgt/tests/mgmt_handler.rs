//! Handler-level tests of the management plane: request bytes, validation
//! (a refused request changes nothing), effects, sessions in `show`, and
//! the queries the login path uses.

use std::net::{IpAddr, SocketAddr};

use rtgt::mgmt::ipc::{self, TgtadmError};
use rtgt::mgmt::request::{Mode, Op, Request, ACCOUNT_OUTGOING};
use rtgt::mgmt::{self, BackingInfo, ConnInfo, Effect, Live, LunSpec, SessionInfo, TargetTable};

#[derive(Default)]
struct Fake {
    sessions: Vec<(u32, SessionInfo)>,
    effects: Vec<Effect>,
    busy: bool,
}

impl Live for Fake {
    fn open_backing(&mut self, _tid: u32, spec: &LunSpec) -> Result<BackingInfo, TgtadmError> {
        match spec.path.as_deref() {
            Some("/dev/fake100m") => Ok(BackingInfo {
                size_bytes: 100 << 20,
                readonly: false,
                physical_block_size: 4096,
                identity: None,
            }),
            Some("/ro") => Ok(BackingInfo {
                size_bytes: 1 << 20,
                readonly: true,
                physical_block_size: 0,
                identity: None,
            }),
            // A medium with an identity of its own, as an RBD image.
            Some(p) if p.starts_with("pool/") => Ok(BackingInfo {
                size_bytes: 1 << 20,
                readonly: false,
                physical_block_size: 0,
                identity: Some(format!("fsid/1/{}", &p[5..])),
            }),
            _ => Err(TgtadmError::InvalidRequest),
        }
    }
    fn sessions(&self, tid: u32) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .filter(|(t, _)| *t == tid)
            .map(|(_, s)| s.clone())
            .collect()
    }
    fn apply(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
    fn lun_busy(&self, _tid: u32, lun: u64) -> bool {
        self.busy && lun == 1
    }
}

fn req(mode: Mode, op: Op, tid: i32, params: &str) -> Request {
    Request {
        mode,
        op,
        tid,
        params: params.into(),
        ..Request::default()
    }
}

fn lu(op: Op, tid: i32, lun: u64, params: &str) -> Request {
    Request {
        lun,
        ..req(Mode::Device, op, tid, params)
    }
}

fn setup() -> (TargetTable, Fake) {
    let mut t = TargetTable::new();
    let mut f = Fake::default();
    let ok = |t: &mut TargetTable, f: &mut Fake, r: Request| {
        mgmt::handle(t, &r, f).unwrap();
    };
    ok(
        &mut t,
        &mut f,
        req(
            Mode::Target,
            Op::New,
            1,
            "targetname=iqn.2024-01.com.example:t1",
        ),
    );
    ok(
        &mut t,
        &mut f,
        lu(Op::New, 1, 1, "path=/dev/fake100m,bstype=rdwr"),
    );
    ok(
        &mut t,
        &mut f,
        req(Mode::Target, Op::Bind, 1, "initiator-address=ALL"),
    );
    ok(
        &mut t,
        &mut f,
        req(Mode::Account, Op::New, -1, "user=alice,password=pw"),
    );
    (t, f)
}

/// The bytes the stock tgtadm sent for
/// `tgtadm -C 7001 --op new --mode target --tid 1 -T iqn.2024-01.com.example:t1`
/// (captured with strace on x86-64).
fn captured_target_new() -> Vec<u8> {
    let mut b = vec![0u8; 120];
    b[0] = 1; // MODE_TARGET
    b[72] = 0x9e; // len = 158
    b[76] = 1; // tid
    for x in &mut b[88..96] {
        *x = 0xff; // lun: none
    }
    b.extend_from_slice(b"targetname=iqn.2024-01.com.example:t1\0");
    b
}

#[test]
fn decode_captured_request_and_round_trip() {
    let bytes = captured_target_new();
    let r = ipc::decode_request(&bytes).unwrap();
    assert_eq!(r.mode, Mode::Target);
    assert_eq!(r.op, Op::New);
    assert_eq!(r.tid, 1);
    assert_eq!(r.lun, u64::MAX);
    assert_eq!(r.params, "targetname=iqn.2024-01.com.example:t1");
    assert_eq!(ipc::encode_request(&r), bytes);
}

#[test]
fn decode_checks_lengths() {
    let mut b = captured_target_new();
    b[72] = 100; // shorter than the header
    assert!(matches!(
        ipc::decode_request(&b),
        Err(ipc::IpcError::ShortLength(100))
    ));
    let mut b = captured_target_new();
    b[72..76].copy_from_slice(&(120u32 + 8193).to_ne_bytes());
    assert!(matches!(
        ipc::decode_request(&b),
        Err(ipc::IpcError::TooLarge(_))
    ));
    let b = captured_target_new();
    assert!(ipc::decode_request(&b[..130]).is_err());
    assert!(ipc::decode_request(&b[..50]).is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn async_read_request_refuses_huge_length_without_allocating() {
    let mut b = captured_target_new();
    b[72..76].copy_from_slice(&u32::MAX.to_ne_bytes());
    let mut r: &[u8] = &b;
    assert!(matches!(
        ipc::read_request(&mut r).await,
        Err(ipc::IpcError::TooLarge(_))
    ));
    let b = captured_target_new();
    let mut r: &[u8] = &b;
    assert_eq!(ipc::read_request(&mut r).await.unwrap().tid, 1);
}

#[test]
fn responses_are_encoded_like_tgtd() {
    assert_eq!(
        ipc::encode_response(&Ok(String::new())),
        [0, 0, 0, 0, 8, 0, 0, 0]
    );
    assert_eq!(
        ipc::encode_response(&Err(TgtadmError::NoTarget)),
        [4, 0, 0, 0, 8, 0, 0, 0]
    );
    assert_eq!(
        ipc::encode_response(&Ok("ab\n".into())),
        [0, 0, 0, 0, 12, 0, 0, 0, b'a', b'b', b'\n', 0]
    );
    let mut r: &[u8] = &[0, 0, 0, 0, 12, 0, 0, 0, b'a', b'b', b'\n', 0];
    assert_eq!(ipc::read_response_blocking(&mut r).unwrap().text, "ab\n");
}

#[test]
fn error_codes_are_tgts() {
    assert_eq!(TgtadmError::NoTarget.code(), 4);
    assert_eq!(TgtadmError::LunExist.code(), 10);
    assert_eq!(TgtadmError::BindingExist.code(), 11);
    assert_eq!(TgtadmError::InvalidRequest.code(), 17);
    assert_eq!(TgtadmError::PreventRemoval.code(), 24);
    for e in TgtadmError::ALL {
        assert_eq!(TgtadmError::from_code(e.code()), Some(e));
        assert_eq!(e.to_string(), ipc::strerror(e.code()));
    }
    assert_eq!(ipc::strerror(99), "(unknown tgtadm_errno)");
}

#[test]
fn refused_requests_change_nothing() {
    let (mut t, mut f) = setup();
    let bad = [
        req(Mode::Target, Op::New, 1, "targetname=iqn.other:x"),
        req(
            Mode::Target,
            Op::New,
            2,
            "targetname=iqn.2024-01.com.example:t1",
        ),
        req(Mode::Target, Op::New, 2, "targetname=bad_name"),
        req(Mode::Target, Op::New, 2, ""),
        req(Mode::Target, Op::Delete, 9, ""),
        req(
            Mode::Target,
            Op::Bind,
            1,
            "initiator-address=ALL,initiator-name=newname",
        ),
        req(Mode::Target, Op::Bind, 1, "initiator-address=ALL"),
        req(
            Mode::Target,
            Op::Unbind,
            1,
            "initiator-address=ALL,initiator-name=nope",
        ),
        req(Mode::Target, Op::Update, 1, "MaxRecvDataSegmentLength=1"),
        req(Mode::Target, Op::Update, 1, "state=weird"),
        req(Mode::Target, Op::Update, 1, "Nope=1"),
        req(Mode::Target, Op::Update, 1, "noequals"),
        lu(Op::New, 1, 1, "path=/dev/fake100m"),
        lu(Op::New, 1, 2, "path=/missing"),
        lu(Op::New, 1, 2, "path=/dev/fake100m,bstype=foo"),
        lu(Op::New, 1, 2, "path=/dev/fake100m,bsoflags=weird"),
        lu(Op::New, 1, 2, "path=/dev/fake100m,bstype=aio,bsoflags=sync"),
        lu(Op::New, 9, 2, "path=/dev/fake100m"),
        Request {
            device_type: 5,
            ..lu(Op::New, 1, 2, "path=/dev/fake100m")
        },
        lu(Op::Delete, 1, 0, ""),
        lu(Op::Delete, 1, 7, ""),
        lu(Op::Update, 1, 1, "targetOps vendor_id=NEW,bogus=1,"),
        lu(
            Op::Update,
            1,
            1,
            "targetOps readonly=1,mode_page=8:0:1:1:2:3,",
        ),
        lu(Op::Update, 1, 1, "targetOps path=/dev/fake100m,"),
        lu(Op::Update, 1, 1, "bsoflags=sync"),
        req(Mode::Account, Op::New, -1, "user=alice,password=x"),
        req(Mode::Account, Op::New, -1, "user=bob"),
        req(Mode::Account, Op::Delete, -1, "user=zed"),
        req(Mode::Account, Op::Bind, 9, "user=alice"),
        req(Mode::Account, Op::Unbind, 1, "user=alice"),
        req(
            Mode::System,
            Op::Update,
            -1,
            "State=offline,iSNSServerPort=x",
        ),
        req(Mode::System, Op::Update, -1, "debug=maybe"),
        req(Mode::System, Op::Delete, -1, ""),
        req(Mode::Portal, Op::New, -1, "portalOps portal=nothost:3260,"),
        req(
            Mode::Portal,
            Op::Delete,
            -1,
            "portalOps portal=1.2.3.4:3260,",
        ),
        req(Mode::Connection, Op::Delete, 1, ""),
        Request {
            lld: "iser".into(),
            ..req(Mode::Target, Op::New, 5, "targetname=iqn.a:b")
        },
    ];
    for r in &bad {
        let before = t.clone();
        let n = f.effects.len();
        assert!(mgmt::handle(&mut t, r, &mut f).is_err(), "{r:?} succeeded");
        assert_eq!(t, before, "{r:?} changed the table");
        assert_eq!(f.effects.len(), n, "{r:?} had an effect");
    }
}

#[test]
fn target_new_creates_controller_lun0_and_effects() {
    let mut t = TargetTable::new();
    let mut f = Fake::default();
    mgmt::handle(
        &mut t,
        &req(Mode::Target, Op::New, 7, "targetname=iqn.a:b"),
        &mut f,
    )
    .unwrap();
    let lun0 = t.lun(7, 0).unwrap();
    assert_eq!(lun0.device_type.name(), "controller");
    assert_eq!(
        (lun0.size_bytes, lun0.path.as_deref(), lun0.bstype.as_str()),
        (0, None, "null")
    );
    assert!(matches!(&f.effects[0], Effect::TargetCreated { tid: 7, name } if name == "iqn.a:b"));
    assert!(matches!(&f.effects[1], Effect::LunAdded { tid: 7, spec } if spec.lun == 0));
    assert!(t.target_by_name("iqn.a:b").is_some());
    assert!(t.target_ready(7));
    assert_eq!(t.session_param(7, "MaxQueueCmd"), Some(128));
    assert_eq!(t.session_param(7, "maxrecvdatasegmentlength"), Some(8192));
}

#[test]
fn lun_new_and_update() {
    let (mut t, mut f) = setup();
    let l = t.lun(1, 1).unwrap();
    assert_eq!(
        (l.size_bytes, l.block_size, l.online, l.lbppbe),
        (100 << 20, 512, true, 3)
    );
    mgmt::handle(
        &mut t,
        &lu(
            Op::New,
            1,
            2,
            "path=/ro,blocksize=4096,bsoflags=sync:direct",
        ),
        &mut f,
    )
    .unwrap();
    let l = t.lun(1, 2).unwrap();
    assert!(l.readonly);
    assert_eq!(
        (l.block_size, l.bsoflags.to_string().as_str()),
        (4096, "sync:direct")
    );
    // A bad block size is ignored, as tgt does.
    mgmt::handle(
        &mut t,
        &lu(Op::New, 1, 3, "path=/ro,blocksize=1000"),
        &mut f,
    )
    .unwrap();
    assert_eq!(t.lun(1, 3).unwrap().block_size, 512);
    // No path: removable, offline.
    mgmt::handle(&mut t, &lu(Op::New, 1, 4, ""), &mut f).unwrap();
    let l = t.lun(1, 4).unwrap();
    assert!(l.removable && !l.online);
    mgmt::handle(&mut t, &lu(Op::New, 1, 5, "path=x,bstype=null"), &mut f).unwrap();
    assert_eq!(t.lun(1, 5).unwrap().size_bytes, 1 << 40);
    mgmt::handle(
        &mut t,
        &lu(
            Op::Update,
            1,
            1,
            "targetOps thin_provisioning=1,vendor_id=ACMEACMEACME,product_id=W,scsi_sn=SN,scsi_id=ID,sense_format=1,rotation_rate=1,lbppbe=2,la_lba=3,optimal_xfer_len=64,mode_page=0x0a:0:4:1:2,",
        ),
        &mut f,
    )
    .unwrap();
    let l = t.lun(1, 1).unwrap();
    assert!(l.thin_provisioning && l.sense_format);
    assert_eq!(l.vendor_id, "ACMEACME");
    assert_eq!((l.scsi_sn.as_str(), l.scsi_id.as_str()), ("SN", "ID"));
    assert_eq!(
        (l.rotation_rate, l.lbppbe, l.no_auto_lbppbe, l.la_lba),
        (1, 2, true, 3)
    );
    assert_eq!(l.optimal_xfer_len, Some(64));
    assert_eq!(l.mode_pages[0].data, vec![1, 2, 0, 0]);
    assert!(
        matches!(f.effects.last(), Some(Effect::LunUpdated { tid: 1, spec }) if spec.thin_provisioning)
    );
    // Loading a medium into the empty unit.
    mgmt::handle(
        &mut t,
        &lu(Op::Update, 1, 4, "targetOps path=/dev/fake100m,"),
        &mut f,
    )
    .unwrap();
    let l = t.lun(1, 4).unwrap();
    assert!(l.online);
    assert_eq!(l.size_bytes, 100 << 20);
    // Busy LUN.
    f.busy = true;
    assert_eq!(
        mgmt::handle(&mut t, &lu(Op::Delete, 1, 1, ""), &mut f),
        Err(TgtadmError::LunActive)
    );
    f.busy = false;
    mgmt::handle(&mut t, &lu(Op::Delete, 1, 1, ""), &mut f).unwrap();
    assert!(t.lun(1, 1).is_none());
    assert_eq!(
        f.effects.last(),
        Some(&Effect::LunDeleted { tid: 1, lun: 1 })
    );
}

fn session() -> SessionInfo {
    SessionInfo {
        nexus_id: 1,
        initiator: "iqn.2024-02.org.test:init1".into(),
        alias: None,
        connections: vec![ConnInfo {
            cid: 0,
            peer: "127.0.0.1:51234".parse().unwrap(),
        }],
    }
}

/// Captured from tgtd 1.0.85 with libiscsi's iscsi-perf logged in.
const GOLDEN_TARGET_WITH_SESSION: &str = "Target 1: iqn.2024-01.com.example:t1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 1
            Initiator: iqn.2024-02.org.test:init1 alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
";
const GOLDEN_CONN_SHOW: &str = "Session: 1
    Connection: 0
        Initiator: iqn.2024-02.org.test:init1
        IP Address: 127.0.0.1
";

#[test]
fn sessions_in_show_and_busy_target() {
    let (mut t, mut f) = setup();
    f.sessions.push((1, session()));
    let all = mgmt::handle(&mut t, &req(Mode::Target, Op::Show, -1, ""), &mut f).unwrap();
    assert!(all.starts_with(GOLDEN_TARGET_WITH_SESSION), "{all}");
    let c = mgmt::handle(&mut t, &req(Mode::Connection, Op::Show, 1, ""), &mut f).unwrap();
    assert_eq!(c, GOLDEN_CONN_SHOW);
    let before = t.clone();
    assert_eq!(
        mgmt::handle(&mut t, &req(Mode::Target, Op::Delete, 1, ""), &mut f),
        Err(TgtadmError::TargetActive)
    );
    assert_eq!(t, before);
    // Closing a connection.
    let close = |sid, cid| Request {
        sid,
        cid,
        ..req(Mode::Connection, Op::Delete, 1, "")
    };
    assert_eq!(
        mgmt::handle(&mut t, &close(2, 0), &mut f),
        Err(TgtadmError::NoSession)
    );
    assert_eq!(
        mgmt::handle(&mut t, &close(1, 3), &mut f),
        Err(TgtadmError::NoConnection)
    );
    mgmt::handle(&mut t, &close(1, 0), &mut f).unwrap();
    assert_eq!(
        f.effects.last(),
        Some(&Effect::ConnectionClose {
            tid: 1,
            sid: 1,
            cid: 0
        })
    );
    let forced = Request {
        force: true,
        ..req(Mode::Target, Op::Delete, 1, "")
    };
    mgmt::handle(&mut t, &forced, &mut f).unwrap();
    assert_eq!(
        f.effects.last(),
        Some(&Effect::TargetDeleted {
            tid: 1,
            force: true
        })
    );
    assert!(t.target(1).is_none());
}

#[test]
fn acl_and_accounts_queries() {
    let (mut t, mut f) = setup();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(t.acl_allows(1, ip("10.9.9.9"), "iqn.any"));
    mgmt::handle(
        &mut t,
        &req(Mode::Target, Op::Unbind, 1, "initiator-address=ALL"),
        &mut f,
    )
    .unwrap();
    assert!(!t.acl_allows(1, ip("10.9.9.9"), "iqn.any"));
    mgmt::handle(
        &mut t,
        &req(Mode::Target, Op::Bind, 1, "initiator-address=10.0.0.0/8"),
        &mut f,
    )
    .unwrap();
    mgmt::handle(
        &mut t,
        &req(Mode::Target, Op::Bind, 1, "initiator-name=iqn.good"),
        &mut f,
    )
    .unwrap();
    assert!(t.acl_allows(1, ip("10.9.9.9"), "iqn.any"));
    assert!(!t.acl_allows(1, ip("11.9.9.9"), "iqn.any"));
    assert!(t.acl_allows(1, ip("11.9.9.9"), "iqn.good"));
    assert!(!t.acl_allows(2, ip("10.9.9.9"), "iqn.good"));

    mgmt::handle(
        &mut t,
        &req(Mode::Account, Op::Bind, 1, "user=alice"),
        &mut f,
    )
    .unwrap();
    let out = Request {
        ac_dir: ACCOUNT_OUTGOING,
        ..req(Mode::Account, Op::Bind, -1, "user=alice")
    };
    mgmt::handle(&mut t, &out, &mut f).unwrap();
    assert_eq!(t.incoming_accounts(Some(1))[0].password, "pw");
    assert_eq!(t.outgoing_account(None).unwrap().user, "alice");
    assert!(t.incoming_accounts(None).is_empty());
    mgmt::handle(
        &mut t,
        &req(Mode::Account, Op::Delete, -1, "user=alice"),
        &mut f,
    )
    .unwrap();
    assert!(t.incoming_accounts(Some(1)).is_empty());
    assert!(t.outgoing_account(None).is_none());
}

#[test]
fn system_and_portals() {
    let (mut t, mut f) = setup();
    mgmt::handle(
        &mut t,
        &req(Mode::System, Op::Update, -1, "State=offline"),
        &mut f,
    )
    .unwrap();
    assert!(!t.system_ready());
    assert_eq!(
        f.effects.last(),
        Some(&Effect::SystemStateChanged { ready: false })
    );
    mgmt::handle(
        &mut t,
        &req(
            Mode::Portal,
            Op::New,
            -1,
            "portalOps portal=[::1]:3261,portal=127.0.0.1,",
        ),
        &mut f,
    )
    .unwrap();
    let a: SocketAddr = "[::1]:3261".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:3260".parse().unwrap();
    assert!(f.effects.contains(&Effect::PortalAdded(a)));
    assert_eq!(
        mgmt::handle(&mut t, &req(Mode::Portal, Op::Show, -1, ""), &mut f).unwrap(),
        "Portal: 127.0.0.1:3260,1\nPortal: [::1]:3261,1\n"
    );
    mgmt::handle(
        &mut t,
        &req(
            Mode::Portal,
            Op::Delete,
            -1,
            "portalOps portal=127.0.0.1:3260,",
        ),
        &mut f,
    )
    .unwrap();
    assert_eq!(f.effects.last(), Some(&Effect::PortalRemoved(b)));
    assert_eq!(t.portals().len(), 1);
    mgmt::handle(&mut t, &req(Mode::Target, Op::Delete, 1, ""), &mut f).unwrap();
    mgmt::handle(&mut t, &req(Mode::System, Op::Delete, -1, ""), &mut f).unwrap();
    assert_eq!(f.effects.last(), Some(&Effect::SystemDeleted));
}

/// A LUN on a medium with its own identity (an RBD image) takes its SCSI
/// identity from it: the same on another target and LUN number (another
/// gateway), different for another image; values set by hand win.
#[test]
fn medium_identity_replaces_tid_lun_defaults() {
    let (mut t, mut f) = setup();
    for (tid, name) in [
        (2, "iqn.2024-01.com.example:t2"),
        (3, "iqn.2024-01.com.example:t3"),
    ] {
        let r = req(Mode::Target, Op::New, tid, &format!("targetname={name}"));
        mgmt::handle(&mut t, &r, &mut f).unwrap();
    }
    let add = |t: &mut TargetTable, f: &mut Fake, tid: i32, lun: u64, path: &str| {
        let r = lu(Op::New, tid, lun, &format!("path={path},bstype=rbd"));
        mgmt::handle(t, &r, f).unwrap();
        t.target(tid as u32).unwrap().luns[&lun].clone()
    };
    let a = add(&mut t, &mut f, 2, 1, "pool/img-a");
    let a2 = add(&mut t, &mut f, 3, 5, "pool/img-a");
    let b = add(&mut t, &mut f, 2, 2, "pool/img-b");
    let file = t.target(1).unwrap().luns[&1].clone();
    assert_eq!(
        file.scsi_id, "IET     00010001",
        "files keep tgt's identity"
    );
    assert_eq!(file.scsi_sn, "beaf11");
    assert_eq!(
        (&a.scsi_id, &a.scsi_sn, a.numeric_id),
        (&a2.scsi_id, &a2.scsi_sn, a2.numeric_id)
    );
    assert!(a.scsi_id.starts_with("IET     ") && a.scsi_id.len() == 24);
    assert_ne!(a.scsi_id, b.scsi_id);
    assert_ne!(a.scsi_sn, b.scsi_sn);
    assert_ne!(a.numeric_id, b.numeric_id);
    assert_eq!(a.numeric_id >> 60, 0, "room for the NAA nibble");
    // Set by hand before the medium is attached: kept.
    let mut spec = LunSpec::new(4, 1, a.device_type, "rbd");
    spec.scsi_sn = "mine".into();
    rtgt::mgmt::handler::medium_identity(&mut spec, 4, "fsid/1/img-a");
    assert_eq!(spec.scsi_sn, "mine");
    assert_eq!(spec.scsi_id, a.scsi_id);
}
