//! The initiator side of login (RFC 7143 §6, §11.12, §11.13): the security
//! stage with `AuthMethod=None` or CHAP (one-way or mutual, §12.1.3), then
//! the operational stage, following the target's C-bit continuations, and
//! the effective parameters that result.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use iscsi::chap::{self, ChapAlgorithm};
use iscsi::pdu::Pdu;
use iscsi::{Bhs, CmdSn, Digests, Itt, Opcode, StatSn};

use crate::conn::{Connection, SessionParams};
use crate::error::Error;
use crate::text;

/// What to ask for at login. `Default` gives an open-iscsi-like normal
/// session request without a target name (set `target_name`).
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Our InitiatorName (iqn).
    pub initiator_name: String,
    /// TargetName; `None` logs in a discovery session.
    pub target_name: Option<String>,
    /// ISID (RFC 7143 §11.12.5); `Default` picks a random type-2 ISID.
    pub isid: [u8; 6],
    /// 0 for a new session; the session's TSIH to add a connection to it.
    pub tsih: u16,
    /// Connection ID.
    pub cid: u16,
    /// Offer `HeaderDigest=CRC32C,None` (else `None`).
    pub header_digest: bool,
    /// Offer `DataDigest=CRC32C,None` (else `None`).
    pub data_digest: bool,
    /// What we declare we can receive per data segment.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_connections: u32,
    /// MaxOutstandingR2T we offer (RFC default 1).
    pub max_outstanding_r2t: u32,
    /// CHAP (user, secret): offer `AuthMethod=CHAP` (only CHAP, so a target
    /// cannot talk us down to None) and answer the target's challenge.
    pub chap: Option<(String, String)>,
    /// Mutual CHAP: the (user, secret) the target must prove it knows. We
    /// send our own CHAP_I / CHAP_C and check the target's CHAP_N / CHAP_R;
    /// a mismatch fails the login with [`Error::Negotiation`]. Needs `chap`.
    pub chap_target: Option<(String, String)>,
    /// The CHAP_A list we offer, in order of preference (IANA codes: 5 MD5,
    /// 6 SHA-1, 7 SHA-256, 8 SHA3-256).
    pub chap_algorithms: Vec<u8>,
    /// More keys for the operational stage; one named like a standard key
    /// replaces our value for it (to send odd values in tests).
    pub extra_keys: Vec<(String, String)>,
    /// Bound on every wait for the target.
    pub timeout: Duration,
    /// Start directly in the operational stage (CSG=1) instead of the
    /// security stage (RFC 7143 §6.3 allows both).
    pub skip_security: bool,
    /// CmdSN of the first command (to test serial-number wrap).
    pub initial_cmd_sn: u32,
}

impl Default for LoginOptions {
    fn default() -> Self {
        let r: [u8; 4] = rand::random();
        LoginOptions {
            initiator_name: "iqn.2026-11.rs.rtgt:initiator".into(),
            target_name: None,
            // Type 2 (random) ISID: "10b" in the top bits (§11.12.5).
            isid: [0x80, r[0], r[1], r[2], r[3], 0x00],
            tsih: 0,
            cid: 0,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: false,
            max_connections: 1,
            max_outstanding_r2t: 1,
            chap: None,
            chap_target: None,
            chap_algorithms: vec![7, 5],
            extra_keys: Vec::new(),
            timeout: Duration::from_secs(10),
            skip_security: false,
            initial_cmd_sn: 1,
        }
    }
}

/// What the target answered at login.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// Every key=value the target sent, in order, over all login responses.
    pub keys: Vec<(String, String)>,
    /// TSIH the target assigned.
    pub tsih: u16,
    /// StatSN of the final Login Response.
    pub stat_sn: u32,
    /// ExpCmdSN / MaxCmdSN of the final Login Response.
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// The effective parameters now in force.
    pub params: SessionParams,
}

impl Negotiated {
    /// The target's last value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A login that ran to its end, successful or not, for tests that inspect
/// a refused login.
pub struct LoginAttempt {
    /// Status-Class of the last Login Response (0 = success).
    pub class: u8,
    /// Status-Detail of the last Login Response.
    pub detail: u8,
    /// Every Login Response received, in order.
    pub responses: Vec<Pdu>,
    /// The connection in full feature phase when `class == 0`.
    pub session: Option<(Connection, Negotiated)>,
}

/// Keys a target declares without our having offered them (§13).
const DECLARATIVE: &[&str] = &[
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "MaxRecvDataSegmentLength",
];

fn kv(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn login_bhs(conn: &Connection, itt: u32, transit: bool, csg: u8, nsg: u8) -> Bhs {
    let mut b = Bhs::new(Opcode::LoginRequest);
    b.0[0] |= 0x40; // login requests are always immediate (§11.12)
    let nsg = if transit { nsg } else { 0 };
    b.set_flags(if transit { 0x80 } else { 0 } | (csg & 3) << 2 | (nsg & 3));
    b.0[2] = 0; // Version-max
    b.0[3] = 0; // Version-min
    b.0[8..14].copy_from_slice(&conn.isid);
    b.set_u16_at(14, conn.tsih);
    b.set_itt(Itt(itt));
    b.set_u16_at(20, conn.cid);
    b.set_u32_at(24, conn.cmd_sn.0);
    b.set_u32_at(28, conn.exp_stat_sn.0);
    b
}

/// Where our side of CHAP stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChapState {
    /// Nothing agreed yet (or AuthMethod=None).
    Idle,
    /// AuthMethod=CHAP agreed, CHAP_A sent: waiting for the challenge.
    Algorithms(Vec<u8>),
    /// Our response sent; for mutual CHAP, the identifier and challenge we
    /// sent the target, to check its answer against.
    Responded(Option<(ChapAlgorithm, u8, Vec<u8>)>),
    /// Authenticated (both ways if mutual).
    Done,
}

/// One security-stage step of CHAP: read the target's keys, push ours.
fn chap_step(
    opts: &LoginOptions,
    state: ChapState,
    pairs: &[(String, String)],
    out: &mut Vec<(String, String)>,
) -> Result<ChapState, Error> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    };
    let fail = |why: &str| Error::Negotiation(format!("CHAP: {why}"));
    let mut state = state;
    if let Some(m) = get("AuthMethod") {
        match (m, &opts.chap) {
            ("None", None) => return Ok(ChapState::Done),
            ("CHAP", Some(_)) if state == ChapState::Idle => {
                let list: Vec<String> =
                    opts.chap_algorithms.iter().map(|a| a.to_string()).collect();
                out.push(kv("CHAP_A", list.join(",")));
                state = ChapState::Algorithms(opts.chap_algorithms.clone());
            }
            ("CHAP", None) => {
                return Err(Error::Unsupported(
                    "the target demands authentication (CHAP)",
                ))
            }
            (m, _) => return Err(fail(&format!("target answered AuthMethod={m}"))),
        }
    }
    let Some((user, secret)) = &opts.chap else {
        return Ok(state);
    };
    match state {
        ChapState::Algorithms(ref offered) if get("CHAP_C").is_some() => {
            let a = get("CHAP_A")
                .and_then(chap::parse_number)
                .filter(|&a| offered.iter().any(|&o| o as u64 == a))
                .and_then(ChapAlgorithm::from_code)
                .ok_or_else(|| fail("target chose an algorithm we did not offer"))?;
            let id = get("CHAP_I")
                .and_then(chap::parse_number)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| fail("bad CHAP_I"))?;
            let c = get("CHAP_C")
                .and_then(chap::decode_binary)
                .ok_or_else(|| fail("bad CHAP_C"))?;
            out.push(kv("CHAP_N", user));
            out.push(kv(
                "CHAP_R",
                chap::encode_hex(&a.response(id, secret.as_bytes(), &c)),
            ));
            if opts.chap_target.is_some() {
                let my_id: u8 = rand::random();
                let mut my_c = vec![0u8; a.challenge_len()];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut my_c);
                out.push(kv("CHAP_I", my_id));
                out.push(kv("CHAP_C", chap::encode_hex(&my_c)));
                Ok(ChapState::Responded(Some((a, my_id, my_c))))
            } else {
                Ok(ChapState::Responded(None))
            }
        }
        ChapState::Responded(None) => Ok(ChapState::Done),
        ChapState::Responded(Some((a, id, c))) => {
            let (want_user, want_secret) = opts.chap_target.as_ref().expect("mutual");
            let n = get("CHAP_N").ok_or_else(|| fail("target sent no CHAP_N"))?;
            let r = get("CHAP_R")
                .and_then(chap::decode_binary)
                .ok_or_else(|| fail("target sent no CHAP_R"))?;
            if n != want_user || r != a.response(id, want_secret.as_bytes(), &c) {
                return Err(fail("the target failed mutual authentication"));
            }
            Ok(ChapState::Done)
        }
        s => Ok(s),
    }
}

impl Connection {
    /// Connect and log in; fails with [`Error::LoginFailed`] when the target
    /// refuses. Returns the connection in full feature phase and what was
    /// negotiated.
    pub fn login(addr: SocketAddr, opts: &LoginOptions) -> Result<(Connection, Negotiated), Error> {
        let a = Connection::login_raw(addr, opts)?;
        match a.session {
            Some(s) => Ok(s),
            None => Err(Error::LoginFailed {
                class: a.class,
                detail: a.detail,
            }),
        }
    }

    /// Connect and log in, returning a refused login as a value.
    pub fn login_raw(addr: SocketAddr, opts: &LoginOptions) -> Result<LoginAttempt, Error> {
        Connection::connect(addr, opts.timeout)?.login_on(opts)
    }

    /// Log in on an already connected (not yet logged in) connection.
    pub fn login_on(mut self, opts: &LoginOptions) -> Result<LoginAttempt, Error> {
        if opts.chap_target.is_some() && opts.chap.is_none() {
            return Err(Error::Usage("mutual CHAP (chap_target) needs chap"));
        }
        let discovery = opts.target_name.is_none();
        self.isid = opts.isid;
        self.tsih = opts.tsih;
        self.cid = opts.cid;
        self.cmd_sn = CmdSn(opts.initial_cmd_sn);
        self.exp_cmd_sn = self.cmd_sn;
        self.max_cmd_sn = self.cmd_sn;
        self.exp_stat_sn = StatSn(0);
        // Login PDUs may carry up to 8192 bytes whatever we declare (§12.12).
        self.max_recv = 8192.max(opts.max_recv_data_segment_length as usize);
        let itt = 0u32;

        let mut leading = vec![kv("InitiatorName", &opts.initiator_name)];
        leading.push(kv(
            "SessionType",
            if discovery { "Discovery" } else { "Normal" },
        ));
        if let Some(t) = &opts.target_name {
            leading.push(kv("TargetName", t));
        }
        let digest = |on: bool| if on { "CRC32C,None" } else { "None" };
        let mut operational = vec![
            kv("HeaderDigest", digest(opts.header_digest)),
            kv("DataDigest", digest(opts.data_digest)),
            kv(
                "MaxRecvDataSegmentLength",
                opts.max_recv_data_segment_length,
            ),
        ];
        if !discovery {
            operational.extend([
                kv("InitialR2T", yes_no(opts.initial_r2t)),
                kv("ImmediateData", yes_no(opts.immediate_data)),
                kv("MaxBurstLength", opts.max_burst_length),
                kv("FirstBurstLength", opts.first_burst_length),
                kv("MaxConnections", opts.max_connections),
                kv("MaxOutstandingR2T", opts.max_outstanding_r2t),
                kv("DefaultTime2Wait", 2),
                kv("DefaultTime2Retain", 0),
                kv("ErrorRecoveryLevel", 0),
            ]);
        }
        for (k, v) in &opts.extra_keys {
            match operational.iter_mut().find(|(ok, _)| ok == k) {
                Some(slot) => slot.1 = v.clone(),
                None => operational.push((k.clone(), v.clone())),
            }
        }

        let mut stage: u8 = if opts.skip_security { 1 } else { 0 };
        let mut to_send = leading.clone();
        let mut chap_state = ChapState::Idle;
        if stage == 0 {
            to_send.push(kv(
                "AuthMethod",
                if opts.chap.is_some() { "CHAP" } else { "None" },
            ));
        } else {
            to_send.extend(operational.iter().cloned());
        }
        let mut sent: HashSet<String> = HashSet::new();
        let mut got: Vec<(String, String)> = Vec::new();
        let mut responses = Vec::new();

        for _round in 0..16 {
            let nsg = if stage == 0 { 1 } else { 3 };
            for (k, _) in &to_send {
                sent.insert(k.clone());
            }
            let payload = text::encode(&to_send);
            if payload.len() > 8192 {
                return Err(Error::Unsupported("login requests longer than one PDU"));
            }
            let b = login_bhs(&self, itt, true, stage, nsg);
            self.send_one(&b, &payload)?;

            // Collect the response, following C-bit continuation (§11.13.2):
            // each partial response is answered by an empty request.
            let mut data = Vec::new();
            let last = loop {
                let p = self.recv_one()?;
                if p.bhs.opcode() != Some(Opcode::LoginResponse) {
                    return Err(Error::Protocol(format!(
                        "{:?} during login",
                        p.bhs.opcode()
                    )));
                }
                let class = p.bhs.0[36];
                let detail = p.bhs.0[37];
                // The first response sets StatSN's origin (§11.13.4).
                if responses.is_empty() || self.exp_stat_sn.le(p.bhs.stat_sn()) {
                    self.exp_stat_sn = p.bhs.stat_sn().next();
                }
                self.exp_cmd_sn = p.bhs.exp_cmd_sn();
                self.max_cmd_sn = p.bhs.max_cmd_sn();
                responses.push(p.clone());
                if class != 0 {
                    return Ok(LoginAttempt {
                        class,
                        detail,
                        responses,
                        session: None,
                    });
                }
                if p.bhs.0[3] != 0 {
                    return Err(Error::Protocol(format!("Version-active {}", p.bhs.0[3])));
                }
                if p.bhs.itt().0 != itt {
                    return Err(Error::Protocol(
                        "Login Response with a different ITT".into(),
                    ));
                }
                data.extend_from_slice(&p.data);
                if p.bhs.login_continue() {
                    if p.bhs.login_transit() {
                        return Err(Error::Protocol("Login Response with both T and C".into()));
                    }
                    let b = login_bhs(&self, itt, false, stage, nsg);
                    self.send_one(&b, &[])?;
                    continue;
                }
                break p;
            };
            self.tsih = last.bhs.tsih();
            let pairs = text::parse(&data);
            let mut auth_keys = Vec::new();
            if stage == 0 {
                chap_state = chap_step(opts, chap_state, &pairs, &mut auth_keys)?;
            }
            // Keys the target offered on its own need an answer: accept its
            // first value (any of its values is acceptable to it).
            let mut answers: Vec<(String, String)> = pairs
                .iter()
                .filter(|(k, v)| {
                    !sent.contains(k)
                        && !k.starts_with("CHAP_")
                        && !DECLARATIVE.contains(&k.as_str())
                        && !matches!(v.as_str(), "Irrelevant" | "NotUnderstood" | "Reject")
                })
                .map(|(k, v)| (k.clone(), v.split(',').next().unwrap_or("").to_string()))
                .collect();
            answers.extend(auth_keys);
            got.extend(pairs);
            let csg = last.bhs.login_csg();
            if csg != stage {
                return Err(Error::Protocol(format!(
                    "Login Response CSG {csg}, we are in {stage}"
                )));
            }
            if last.bhs.login_transit() {
                let next = last.bhs.login_nsg();
                if next == 3 && stage == 0 && opts.chap.is_some() && chap_state != ChapState::Done {
                    return Err(Error::Negotiation(
                        "the target left the security stage before CHAP finished".into(),
                    ));
                }
                if next == 3 {
                    return self
                        .enter_full_feature(opts, got, responses, discovery, &operational)
                        .map(|(c, n)| LoginAttempt {
                            class: 0,
                            detail: 0,
                            responses: n.1,
                            session: Some((c, n.0)),
                        });
                }
                if next != 1 || stage != 0 {
                    return Err(Error::Protocol(format!(
                        "Login transit from {stage} to {next}"
                    )));
                }
                if opts.chap.is_some() && chap_state != ChapState::Done {
                    return Err(Error::Negotiation(
                        "the target left the security stage before CHAP finished".into(),
                    ));
                }
                stage = 1;
                to_send = operational.clone();
                to_send.extend(answers);
            } else {
                to_send = answers;
            }
        }
        Err(Error::Negotiation(
            "login did not finish in 16 exchanges".into(),
        ))
    }

    fn enter_full_feature(
        mut self,
        opts: &LoginOptions,
        keys: Vec<(String, String)>,
        responses: Vec<Pdu>,
        discovery: bool,
        sent_values: &[(String, String)],
    ) -> Result<(Connection, (Negotiated, Vec<Pdu>)), Error> {
        let get = |k: &str| {
            keys.iter()
                .rev()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.as_str())
        };
        let num = |k: &str, default: u32| -> Result<u32, Error> {
            match get(k) {
                None | Some("Irrelevant") | Some("NotUnderstood") => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| Error::Negotiation(format!("{k}={v}"))),
            }
        };
        let boolean = |k: &str, default: bool| -> Result<bool, Error> {
            match get(k) {
                None | Some("Irrelevant") | Some("NotUnderstood") => Ok(default),
                Some("Yes") => Ok(true),
                Some("No") => Ok(false),
                Some(v) => Err(Error::Negotiation(format!("{k}={v}"))),
            }
        };
        // The answer to a list key must be one of the values we offered
        // (RFC 7143 §6.2.1); `offered` is what actually went on the wire.
        let digest = |k: &str| -> Result<bool, Error> {
            let offered = sent_values
                .iter()
                .rev()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("None");
            match get(k) {
                None => Ok(false),
                Some(v) if offered.split(',').any(|o| o == v) => Ok(v == "CRC32C"),
                Some(v) => Err(Error::Negotiation(format!(
                    "{k}={v}, but we offered {offered}"
                ))),
            }
        };
        let d = SessionParams::default();
        let mut p = SessionParams {
            discovery,
            header_digest: digest("HeaderDigest")?,
            data_digest: digest("DataDigest")?,
            our_max_recv_data_segment_length: opts.max_recv_data_segment_length,
            target_max_recv_data_segment_length: num("MaxRecvDataSegmentLength", 8192)?,
            ..d.clone()
        };
        if !discovery {
            p.max_burst_length = num("MaxBurstLength", d.max_burst_length)?;
            p.first_burst_length = num("FirstBurstLength", d.first_burst_length)?;
            p.immediate_data = boolean("ImmediateData", d.immediate_data)?;
            p.initial_r2t = boolean("InitialR2T", d.initial_r2t)?;
            p.max_outstanding_r2t = num("MaxOutstandingR2T", d.max_outstanding_r2t)?;
            // The target's answers to Min / And / Or keys (§13) cannot exceed
            // or loosen what we offered: catch a target that gets this wrong.
            let overrides = |k: &str| opts.extra_keys.iter().any(|(kk, _)| kk == k);
            if !overrides("MaxBurstLength") && p.max_burst_length > opts.max_burst_length {
                return Err(Error::Negotiation(format!(
                    "MaxBurstLength={} > offered",
                    p.max_burst_length
                )));
            }
            if !overrides("FirstBurstLength") && p.first_burst_length > opts.first_burst_length {
                return Err(Error::Negotiation(format!(
                    "FirstBurstLength={} > offered",
                    p.first_burst_length
                )));
            }
            if !overrides("MaxOutstandingR2T") && p.max_outstanding_r2t > opts.max_outstanding_r2t {
                return Err(Error::Negotiation("MaxOutstandingR2T above offered".into()));
            }
            if !overrides("ImmediateData") && p.immediate_data && !opts.immediate_data {
                return Err(Error::Negotiation(
                    "ImmediateData=Yes after we offered No".into(),
                ));
            }
            if !overrides("InitialR2T") && !p.initial_r2t && opts.initial_r2t {
                return Err(Error::Negotiation(
                    "InitialR2T=No after we offered Yes".into(),
                ));
            }
            p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        }
        if p.target_max_recv_data_segment_length < 512 {
            return Err(Error::Negotiation(
                "target MaxRecvDataSegmentLength below 512".into(),
            ));
        }
        // Digests start with the first PDU after the final Login Response (§13.1).
        self.digests = Digests {
            header: p.header_digest,
            data: p.data_digest,
        };
        self.max_recv = opts.max_recv_data_segment_length as usize;
        self.params = p.clone();
        let last = responses.last().map(|r| r.bhs).unwrap_or_default();
        let n = Negotiated {
            keys,
            tsih: self.tsih,
            stat_sn: last.stat_sn().0,
            exp_cmd_sn: last.exp_cmd_sn().0,
            max_cmd_sn: last.max_cmd_sn().0,
            params: p,
        };
        Ok((self, (n, responses)))
    }
}
