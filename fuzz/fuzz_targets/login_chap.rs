//! The login state machine with a target that requires CHAP (RFC 7143
//! §12.1.3), fed arbitrary Login Request PDUs.
//!
//! The target's challenge is random, so a fuzzer could never guess a valid
//! CHAP_R. To reach the states after a successful response (mutual CHAP,
//! the operational stage, the full feature phase), a request whose data
//! holds the value `CHAP_R=@` gets the right response for alice's secret,
//! computed from the CHAP_A / CHAP_I / CHAP_C of the last response.
//! When the target answers a mutual challenge, its CHAP_R is checked
//! against the outgoing secret.
#![no_main]
use iscsi::chap::{decode_binary, encode_hex, parse_number};
use iscsi::pdu::{Bhs, Pdu, BHS_LEN};
use iscsi::{
    AuthRequirement, ChapAccounts, ChapAlgorithm, ChapCredentials, Login, LoginConfig, LoginHost,
    LoginRequestInfo, LoginStatus, LoginStep, TargetLoginInfo,
};
use libfuzzer_sys::fuzz_target;

const ALICE_SECRET: &str = "alice-secret-1";
const TARGET_SECRET: &str = "target-secret-9";

struct Host;
impl LoginHost for Host {
    fn admit(&mut self, _req: &LoginRequestInfo) -> Result<TargetLoginInfo, LoginStatus> {
        Ok(TargetLoginInfo {
            auth: AuthRequirement::Chap(ChapAccounts {
                incoming: vec![
                    ChapCredentials::new("alice", ALICE_SECRET),
                    ChapCredentials::new("bob", "bob-secret-123"),
                ],
                outgoing: Some(ChapCredentials::new("tgt-user", TARGET_SECRET)),
                ..ChapAccounts::default()
            }),
            ..TargetLoginInfo::default()
        })
    }
    fn allocate_tsih(&mut self) -> u16 {
        7
    }
}

/// The value of `key` in a (possibly truncated) text data segment.
fn get<'a>(data: &'a [u8], key: &str) -> Option<&'a str> {
    data.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(key)?.strip_prefix('=')
    })
}

fn responses(step: &LoginStep) -> &[Pdu] {
    match step {
        LoginStep::Continue(r) => r,
        LoginStep::FullFeature { responses, .. } | LoginStep::Failed { responses } => responses,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut login = Login::new(LoginConfig::default());
    // The target's CHAP_A / CHAP_I / CHAP_C, once sent.
    let mut challenge: Option<(ChapAlgorithm, u8, Vec<u8>)> = None;
    // Request data since the last final (C=0) request: what the target
    // parses its keys from (RFC 7143 §11.12.2 continued requests).
    let mut sent = Vec::new();
    let mut rest = data;
    while rest.len() >= BHS_LEN + 2 {
        let bhs = Bhs(rest[..BHS_LEN].try_into().unwrap());
        let dlen = (rest[BHS_LEN] as usize) << 8 | rest[BHS_LEN + 1] as usize;
        rest = &rest[BHS_LEN + 2..];
        let take = dlen.min(rest.len());
        let mut body = rest[..take].to_vec();
        rest = &rest[take..];
        if let Some((alg, id, c)) = &challenge {
            let pos = body.windows(9).position(|w| w == b"CHAP_R=@\0");
            if let Some(p) = pos {
                let r = encode_hex(&alg.response(*id, ALICE_SECRET.as_bytes(), c));
                body.splice(p + 7..p + 8, r.into_bytes());
            }
        }
        let pdu = Pdu::with_data(bhs, body);
        let step = login.handle_pdu(&pdu, &mut Host);
        sent.extend_from_slice(&pdu.data);
        let continued = pdu.bhs.0[1] & 0x40 != 0;
        let out: Vec<u8> = responses(&step)
            .iter()
            .flat_map(|p| p.data.iter().copied())
            .collect();
        if let (Some(a), Some(i), Some(c)) = (
            get(&out, "CHAP_A"),
            get(&out, "CHAP_I"),
            get(&out, "CHAP_C"),
        ) {
            let alg = parse_number(a)
                .and_then(ChapAlgorithm::from_code)
                .expect("target CHAP_A");
            let id = parse_number(i)
                .and_then(|n| u8::try_from(n).ok())
                .expect("target CHAP_I");
            let c = decode_binary(c).expect("target CHAP_C");
            assert_eq!(c.len(), alg.challenge_len());
            challenge = Some((alg, id, c));
        }
        if let Some(r) = get(&out, "CHAP_R") {
            // Mutual CHAP: the target proves the outgoing secret against the
            // CHAP_I / CHAP_C we sent (parsed as the target parses them).
            let (alg, _, _) = challenge.as_ref().expect("CHAP_R before CHAP_A");
            let i = get(&sent, "CHAP_I")
                .and_then(parse_number)
                .expect("our CHAP_I");
            let c = get(&sent, "CHAP_C")
                .and_then(decode_binary)
                .expect("our CHAP_C");
            let want = alg.response(i as u8, TARGET_SECRET.as_bytes(), &c);
            assert_eq!(decode_binary(r).expect("target CHAP_R"), want);
            assert_eq!(get(&out, "CHAP_N"), Some("tgt-user"));
        }
        if !continued {
            sent.clear();
        }
        match step {
            LoginStep::Continue(_) => {}
            LoginStep::FullFeature { .. } => {
                assert!(login.chap().is_some_and(|c| c.is_done()));
                return;
            }
            LoginStep::Failed { .. } => return,
        }
    }
});
