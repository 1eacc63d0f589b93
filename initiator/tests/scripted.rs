//! The initiator against a scripted fake target on loopback, for paths tgt
//! never takes: a login response split with the C bit, a target NOP-In ping
//! in the middle of a read, Data-In out of offset order with the status in
//! a separate SCSI Response and an underflow, a closed command window that
//! a NOP-In reopens, two outstanding R2Ts, and Text continuation.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use initiator::{cdb, Connection, LoginOptions};
use iscsi::pdu::{self, Pdu};
use iscsi::{Bhs, CmdSn, Digests, Itt, Opcode, Residual, StatSn, Ttt};

fn recv(s: &mut TcpStream, buf: &mut Vec<u8>) -> Pdu {
    loop {
        if let Some((p, n)) = pdu::decode(buf, Digests::default(), 1 << 20).unwrap() {
            buf.drain(..n);
            return p;
        }
        let mut tmp = [0u8; 65536];
        let n = s.read(&mut tmp).expect("fake target read");
        assert!(n > 0, "initiator closed the connection");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn send(s: &mut TcpStream, mut p: Pdu, stat_sn: u32, exp: u32, max: u32) {
    p.bhs.set_stat_sn(StatSn(stat_sn));
    p.bhs.set_exp_cmd_sn(CmdSn(exp));
    p.bhs.set_max_cmd_sn(CmdSn(max));
    p.bhs.set_data_len(p.data.len());
    s.write_all(&p.encode(Digests::default())).unwrap();
}

fn login_response(itt: Itt, flags: u8, tsih: u16, keys: &str) -> Pdu {
    let mut b = Bhs::new(Opcode::LoginResponse);
    b.set_flags(flags);
    b.set_itt(itt);
    b.set_u16_at(14, tsih);
    Pdu::with_data(b, keys.replace(';', "\0").into_bytes())
}

fn fake_target(l: TcpListener) {
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();

    // --- Login: security stage answered in two parts (C bit) ---
    let p = recv(&mut s, &mut buf);
    assert_eq!(p.bhs.opcode(), Some(Opcode::LoginRequest));
    assert_eq!(p.bhs.flags(), 0x81, "T, CSG 0, NSG 1");
    let itt = p.bhs.itt();
    let cmd_sn = p.bhs.cmd_sn().0;
    assert_eq!(cmd_sn, 1);
    let text = String::from_utf8(p.data.clone()).unwrap();
    assert!(
        text.contains("AuthMethod=None\0") && text.contains("TargetName=iqn.fake:t\0"),
        "{text}"
    );
    send(
        &mut s,
        login_response(itt, 0x40, 0, "TargetPortalGroupTag=1;"),
        100,
        1,
        1,
    );
    let p = recv(&mut s, &mut buf);
    assert_eq!(
        (p.bhs.flags(), p.data.len()),
        (0x00, 0),
        "empty continuation request, T=0 C=0"
    );
    assert_eq!(p.bhs.exp_stat_sn().0, 101);
    send(
        &mut s,
        login_response(itt, 0x81, 0, "AuthMethod=None;"),
        101,
        1,
        1,
    );
    // --- Operational stage ---
    let p = recv(&mut s, &mut buf);
    assert_eq!(p.bhs.flags(), 0x87, "T, CSG 1, NSG 3");
    assert_eq!(p.bhs.exp_stat_sn().0, 102);
    let keys = "HeaderDigest=None;DataDigest=None;MaxRecvDataSegmentLength=4096;InitialR2T=Yes;\
                ImmediateData=No;MaxBurstLength=8192;FirstBurstLength=4096;MaxOutstandingR2T=2;";
    send(&mut s, login_response(itt, 0x87, 7, keys), 102, 1, 1);

    // --- READ of 10240 bytes; a ping first; Data-In backwards; underflow ---
    let cmd = recv(&mut s, &mut buf);
    assert_eq!(cmd.bhs.opcode(), Some(Opcode::ScsiCommand));
    assert_eq!((cmd.bhs.cmd_sn().0, cmd.bhs.exp_stat_sn().0), (1, 103));
    assert!(cmd.bhs.cmd_read() && cmd.bhs.final_bit());
    assert_eq!(cmd.bhs.expected_data_len(), 10240);
    let ritt = cmd.bhs.itt();
    send(
        &mut s,
        pdu::nop_in(Itt(pdu::RESERVED_TAG), Ttt(0x55), 0, b"png".to_vec()),
        103,
        2,
        1,
    );
    let nop = recv(&mut s, &mut buf);
    assert_eq!(nop.bhs.opcode(), Some(Opcode::NopOut));
    assert_eq!(
        (nop.bhs.itt().0, nop.bhs.ttt().0),
        (pdu::RESERVED_TAG, 0x55)
    );
    assert_eq!(nop.data, b"png");
    let lun = cmd.bhs.lun_raw();
    for (sn, off) in [(0u32, 4096u32), (1, 0)] {
        let data = vec![(off / 4096) as u8 + 1; 4096];
        let h = pdu::data_in_header(ritt, lun, sn, off, data.len(), sn == 1, None);
        send(
            &mut s,
            Pdu {
                bhs: h,
                ahs: vec![],
                data,
            },
            0,
            2,
            1,
        );
    }
    let mut r = pdu::scsi_response(ritt, 0, Residual::Underflow(2048), &[]);
    r.bhs.set_u32_at(36, 2); // ExpDataSN: two Data-In sent
                             // The window stays closed: ExpCmdSN 2, MaxCmdSN 1 (a target closes it by
                             // not raising MaxCmdSN; a lower MaxCmdSN would be ignored, §4.2.2.1).
    send(&mut s, r, 103, 2, 1);

    // --- The next command must wait; a ping opens the window ---
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut tmp = [0u8; 1];
    match s.read(&mut tmp) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("initiator sent a command into a closed window: {other:?}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send(
        &mut s,
        pdu::nop_in(Itt(pdu::RESERVED_TAG), Ttt(0x66), 0, vec![]),
        104,
        2,
        5,
    );
    let nop = recv(&mut s, &mut buf);
    assert_eq!(nop.bhs.ttt().0, 0x66);
    assert_eq!(
        nop.bhs.cmd_sn().0,
        2,
        "a NOP-Out answer carries CmdSN without taking it"
    );

    // --- WRITE of 8192 with InitialR2T=Yes, ImmediateData=No: two R2Ts at once ---
    let cmd = recv(&mut s, &mut buf);
    assert_eq!(cmd.bhs.cmd_sn().0, 2);
    assert!(cmd.bhs.cmd_write() && cmd.bhs.final_bit() && cmd.data.is_empty());
    let witt = cmd.bhs.itt();
    send(
        &mut s,
        pdu::r2t(witt, lun, Ttt(0x100), 0, 0, 4096),
        104,
        3,
        5,
    );
    send(
        &mut s,
        pdu::r2t(witt, lun, Ttt(0x101), 1, 4096, 4096),
        104,
        3,
        5,
    );
    let mut got = vec![0u8; 8192];
    for ttt in [0x100u32, 0x101] {
        let d = recv(&mut s, &mut buf);
        assert_eq!(d.bhs.opcode(), Some(Opcode::DataOut));
        assert_eq!(
            (d.bhs.ttt().0, d.bhs.data_sn(), d.bhs.final_bit()),
            (ttt, 0, true)
        );
        assert_eq!(
            d.data.len(),
            4096,
            "split at the target's MaxRecvDataSegmentLength"
        );
        let off = d.bhs.buffer_offset() as usize;
        got[off..off + 4096].copy_from_slice(&d.data);
    }
    assert_eq!(got, (0..8192).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let mut r = pdu::scsi_response(witt, 0, Residual::None, &[]);
    r.bhs.set_u32_at(36, 2); // ExpDataSN: two R2Ts
    send(&mut s, r, 104, 3, 5);

    // --- SendTargets answered in two Text Responses ---
    let t = recv(&mut s, &mut buf);
    assert_eq!(t.bhs.opcode(), Some(Opcode::TextRequest));
    assert_eq!((t.bhs.cmd_sn().0, t.bhs.ttt().0), (3, pdu::RESERVED_TAG));
    assert_eq!(t.data, b"SendTargets=All\0");
    send(
        &mut s,
        pdu::text_response(
            t.bhs.itt(),
            Ttt(0x77),
            false,
            true,
            0,
            b"TargetName=iqn.x\0TargetAdd".to_vec(),
        ),
        105,
        4,
        8,
    );
    let t2 = recv(&mut s, &mut buf);
    assert_eq!(
        (t2.bhs.itt(), t2.bhs.ttt().0, t2.data.len()),
        (t.bhs.itt(), 0x77, 0)
    );
    assert_eq!(t2.bhs.cmd_sn().0, 4);
    send(
        &mut s,
        pdu::text_response(
            t.bhs.itt(),
            Ttt(pdu::RESERVED_TAG),
            true,
            false,
            0,
            b"ress=1.2.3.4:3260,1\0".to_vec(),
        ),
        106,
        5,
        8,
    );

    // --- Logout ---
    let lo = recv(&mut s, &mut buf);
    assert_eq!(lo.bhs.opcode(), Some(Opcode::LogoutRequest));
    assert_eq!(lo.bhs.exp_stat_sn().0, 107);
    send(
        &mut s,
        pdu::logout_response(lo.bhs.itt(), 0, 0, 0),
        107,
        5,
        8,
    );
}

#[test]
fn scripted_target_exercises_rare_paths() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let target = std::thread::spawn(move || fake_target(l));
    let opts = LoginOptions {
        target_name: Some("iqn.fake:t".into()),
        timeout: Duration::from_secs(5),
        max_outstanding_r2t: 4,
        ..Default::default()
    };
    let (mut c, n) = Connection::login(addr, &opts).expect("login");
    assert_eq!(n.tsih, 7);
    assert_eq!(n.get("TargetPortalGroupTag"), Some("1"));
    let p = c.params().clone();
    assert_eq!(
        (
            p.target_max_recv_data_segment_length,
            p.max_burst_length,
            p.max_outstanding_r2t
        ),
        (4096, 8192, 2)
    );
    assert!(p.initial_r2t && !p.immediate_data);

    let r = c.scsi(0, &cdb::read16(0, 20), &[], 10240).expect("read");
    assert!(r.is_good());
    assert_eq!(r.residual, Residual::Underflow(2048));
    assert_eq!(r.data.len(), 8192);
    assert!(r.data[..4096].iter().all(|&b| b == 1) && r.data[4096..].iter().all(|&b| b == 2));
    assert_eq!(c.pings_answered, 1);
    assert_eq!(c.cmd_window(), (2, 1), "window closed");

    let data: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
    let r = c.scsi(0, &cdb::write16(0, 16), &data, 0).expect("write");
    assert!(r.is_good());
    assert_eq!(c.pings_answered, 2);

    let t = c.send_targets("All").expect("SendTargets");
    assert_eq!(
        t,
        vec![("iqn.x".to_string(), vec!["1.2.3.4:3260,1".to_string()])]
    );
    assert_eq!(c.logout(0).unwrap(), 0);
    target.join().expect("fake target failed");
}
