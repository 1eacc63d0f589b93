//! CHAP for iSCSI login (RFC 7143 §12.1.3, RFC 1994), sans-I/O.
//!
//! [`ChapServer`] is the target's side of one exchange: it picks an
//! algorithm from the initiator's `CHAP_A` list, sends `CHAP_I` / `CHAP_C`,
//! checks the initiator's `CHAP_N` / `CHAP_R` against the accounts it was
//! given and, when the initiator asks for mutual authentication with its own
//! `CHAP_I` / `CHAP_C`, answers with the target's `CHAP_N` / `CHAP_R`.
//! [`ChapAlgorithm::response`] is shared with the initiator side.
//!
//! Every failure is reported as the same [`ChapError`] category to the peer
//! (login status 0x0201): a failed login never says whether the user, the
//! secret or the mutual part was wrong (RFC 7143 §12.1.3, §11.13.5).

use std::fmt;

use rand::RngCore;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::status::LoginStatus;
use crate::text::{KeyValue, TextBuilder};

/// Longest binary value (CHAP_C, CHAP_R) we decode, in bytes. RFC 7143
/// §12.1.3 bounds the challenge at 1024 bytes; nothing longer is needed.
pub const MAX_BINARY_LEN: usize = 1024;

/// Longest CHAP_N accepted (a name is a standard text value, RFC 7143 §6.1).
pub const MAX_NAME_LEN: usize = 255;

/// The CHAP digest algorithms, with their codes from the IANA "PPP
/// Authentication Algorithms" registry that RFC 7143 §12.1.3 refers to
/// (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256; as in RFC 7143 and Linux LIO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChapAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha3_256,
}

impl ChapAlgorithm {
    /// Every supported algorithm, strongest first (the order an initiator
    /// should offer them in).
    pub const ALL: [ChapAlgorithm; 4] = [
        ChapAlgorithm::Sha3_256,
        ChapAlgorithm::Sha256,
        ChapAlgorithm::Sha1,
        ChapAlgorithm::Md5,
    ];

    /// The algorithm with IANA code `code`, if we implement it.
    pub fn from_code(code: u64) -> Option<ChapAlgorithm> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            6 => Some(ChapAlgorithm::Sha1),
            7 => Some(ChapAlgorithm::Sha256),
            8 => Some(ChapAlgorithm::Sha3_256),
            _ => None,
        }
    }

    /// The IANA code sent in CHAP_A.
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha1 => 6,
            ChapAlgorithm::Sha256 => 7,
            ChapAlgorithm::Sha3_256 => 8,
        }
    }

    /// Length of a response (the digest), in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha1 => 20,
            ChapAlgorithm::Sha256 | ChapAlgorithm::Sha3_256 => 32,
        }
    }

    /// Length of the challenges we generate: at least 16 bytes and never
    /// shorter than the digest, so the challenge has as much entropy as the
    /// hash can carry (RFC 7143 §12.1.3 asks for unpredictable challenges).
    pub fn challenge_len(self) -> usize {
        self.digest_len().max(16)
    }

    /// The CHAP response of RFC 1994 §4.1: H(identifier || secret ||
    /// challenge), the identifier being one octet.
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn h<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            ChapAlgorithm::Md5 => h::<md5::Md5>(id, secret, challenge),
            ChapAlgorithm::Sha1 => h::<sha1::Sha1>(id, secret, challenge),
            ChapAlgorithm::Sha256 => h::<sha2::Sha256>(id, secret, challenge),
            ChapAlgorithm::Sha3_256 => h::<sha3::Sha3_256>(id, secret, challenge),
        }
    }
}

/// A CHAP identity: a user name and its secret. `Debug` never shows the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl ChapCredentials {
    pub fn new(user: impl Into<String>, secret: impl AsRef<[u8]>) -> ChapCredentials {
        ChapCredentials {
            user: user.into(),
            secret: secret.as_ref().to_vec(),
        }
    }
}

impl fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What a CHAP login is checked against: the initiators' accounts the
/// target accepts (tgt's "incoming" users of the target, or the global ones
/// for a discovery session) and the target's own identity for mutual CHAP
/// (tgt's "outgoing" user), if one is bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChapAccounts {
    pub incoming: Vec<ChapCredentials>,
    pub outgoing: Option<ChapCredentials>,
    /// Mutual CHAP identities that depend on who the initiator proved to
    /// be (SPDK's auth groups: each secret has its own `muser`/`msecret`):
    /// (initiator's CHAP_N, the identity we answer with). Looked up before
    /// `outgoing`.
    pub outgoing_for: Vec<(String, ChapCredentials)>,
    /// The initiator must ask for mutual CHAP (send CHAP_I and CHAP_C);
    /// one-way CHAP is refused.
    pub require_mutual: bool,
}

/// Why a CHAP exchange failed. Each variant is for logs and tests only: the
/// initiator sees 0x0201 for all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    /// No CHAP_A, or CHAP_A names no algorithm we implement.
    #[error("no supported CHAP algorithm offered")]
    NoAlgorithm,
    /// A CHAP key arrived out of turn (e.g. CHAP_R before our challenge,
    /// CHAP_A twice, keys after the exchange ended).
    #[error("CHAP key {0} out of sequence")]
    Sequence(String),
    /// CHAP_N or CHAP_R missing from the initiator's answer, or only one of
    /// CHAP_I / CHAP_C sent.
    #[error("CHAP key {0} missing")]
    Missing(&'static str),
    /// A value is malformed (bad number, bad hex or base64, too long, empty).
    #[error("malformed value of {0}")]
    Malformed(&'static str),
    /// Unknown user, wrong secret, or a response of the wrong length.
    #[error("initiator response does not match")]
    BadResponse,
    /// The initiator sent back our own challenge (a reflection attack,
    /// RFC 7143 §12.1.3: responders MUST check for it).
    #[error("initiator reflected the target's challenge")]
    Reflected,
    /// The initiator asked for mutual CHAP but the target has no outgoing
    /// account.
    #[error("mutual CHAP requested but no outgoing account is bound")]
    NoOutgoingAccount,
    /// The exchange already failed.
    #[error("CHAP exchange already failed")]
    Failed,
}

impl ChapError {
    /// Every CHAP failure is an authentication failure (RFC 7143 §11.13.5).
    pub fn login_status(&self) -> LoginStatus {
        LoginStatus::AUTHENTICATION_FAILURE
    }
}

/// Decode a binary value (RFC 7143 §6.1 "binary-value"): `0x`/`0X` then hex
/// digits (an odd count gets an implied leading zero nibble) or `0b`/`0B`
/// then base64 (RFC 4648, padding optional). Empty values and values
/// longer than [`MAX_BINARY_LEN`] bytes are refused.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let (prefix, body) = (v.get(..2)?, v.get(2..)?);
    let out = match prefix {
        "0x" | "0X" => decode_hex(body)?,
        "0b" | "0B" => decode_base64(body)?,
        _ => return None,
    };
    (!out.is_empty() && out.len() <= MAX_BINARY_LEN).then_some(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() > 2 * MAX_BINARY_LEN {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len().div_ceil(2));
    let rest = if b.len() % 2 == 1 {
        out.push(nib(b[0])?);
        &b[1..]
    } else {
        b
    };
    for pair in rest.chunks_exact(2) {
        out.push(nib(pair[0])? << 4 | nib(pair[1])?);
    }
    Some(out)
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() > MAX_BINARY_LEN.div_ceil(3) * 4 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.as_bytes();
    let body = b
        .strip_suffix(b"==")
        .or_else(|| b.strip_suffix(b"="))
        .unwrap_or(b);
    if body.len() % 4 == 1 || (body.len() != b.len() && !b.len().is_multiple_of(4)) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | val(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// `0x` followed by lowercase hex: the form we send.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// `0b` followed by padded base64 (RFC 4648 §4).
pub fn encode_base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::from("0b");
    for chunk in b.chunks(3) {
        let mut n = [0u8; 3];
        n[..chunk.len()].copy_from_slice(chunk);
        let v = u32::from_be_bytes([0, n[0], n[1], n[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A numerical value (RFC 7143 §6.1): decimal, or `0x` hex.
pub fn parse_number(v: &str) -> Option<u64> {
    match v.get(..2) {
        Some("0x") | Some("0X") if v.len() > 2 && v.len() <= 18 => {
            u64::from_str_radix(&v[2..], 16).ok()
        }
        _ if !v.is_empty() && v.len() <= 20 && v.bytes().all(|c| c.is_ascii_digit()) => {
            v.parse().ok()
        }
        _ => None,
    }
}

/// The first algorithm of a CHAP_A list (in the sender's order of
/// preference, RFC 7143 §12.1.3) that we implement. Unknown and malformed
/// entries are skipped.
pub fn pick_algorithm(list: &str) -> Option<ChapAlgorithm> {
    list.split(',')
        .filter_map(parse_number)
        .find_map(ChapAlgorithm::from_code)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for CHAP_A.
    Algorithms,
    /// Challenge sent; waiting for CHAP_N / CHAP_R.
    Response,
    /// Initiator authenticated (and the target, if asked).
    Done,
    Failed,
}

/// Progress of a [`ChapServer`] after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChapProgress {
    /// More requests are needed.
    InProgress,
    /// The initiator is authenticated (and, if it asked, so is the target).
    Done,
}

/// The target side of one CHAP exchange.
pub struct ChapServer {
    accounts: ChapAccounts,
    state: State,
    algorithm: Option<ChapAlgorithm>,
    id: u8,
    challenge: Vec<u8>,
    user: Option<String>,
    mutual: bool,
}

impl fmt::Debug for ChapServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChapServer")
            .field("state", &self.state)
            .field("algorithm", &self.algorithm)
            .field("user", &self.user)
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ChapServer {
    pub fn new(accounts: ChapAccounts) -> ChapServer {
        ChapServer {
            accounts,
            state: State::Algorithms,
            algorithm: None,
            id: 0,
            challenge: Vec::new(),
            user: None,
            mutual: false,
        }
    }

    /// Whether the exchange ended successfully.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The algorithm chosen from CHAP_A.
    pub fn algorithm(&self) -> Option<ChapAlgorithm> {
        self.algorithm
    }

    /// The CHAP_N of the authenticated initiator.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the target also proved itself (mutual CHAP).
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// The challenge we sent (empty before CHAP_A).
    pub fn challenge(&self) -> &[u8] {
        &self.challenge
    }

    /// Process the CHAP_* keys of one Login Request (after AuthMethod=CHAP
    /// was agreed), appending our keys to `out`. An empty `keys` is fine
    /// (the request that only negotiated AuthMethod). After an error the
    /// exchange stays failed.
    pub fn handle(
        &mut self,
        keys: &[KeyValue],
        rng: &mut dyn RngCore,
        out: &mut TextBuilder,
    ) -> Result<ChapProgress, ChapError> {
        let r = self.handle_inner(keys, rng, out);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn handle_inner(
        &mut self,
        keys: &[KeyValue],
        rng: &mut dyn RngCore,
        out: &mut TextBuilder,
    ) -> Result<ChapProgress, ChapError> {
        let get = |k: &str| {
            keys.iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        match self.state {
            State::Failed => Err(ChapError::Failed),
            State::Done => match keys.first() {
                Some(kv) => Err(ChapError::Sequence(kv.key.clone())),
                None => Ok(ChapProgress::Done),
            },
            State::Algorithms => {
                if let Some(kv) = keys.iter().find(|kv| kv.key != "CHAP_A") {
                    return Err(ChapError::Sequence(kv.key.clone()));
                }
                let Some(list) = get("CHAP_A") else {
                    return Ok(ChapProgress::InProgress);
                };
                let alg = pick_algorithm(list).ok_or(ChapError::NoAlgorithm)?;
                let mut challenge = vec![0u8; alg.challenge_len()];
                rng.fill_bytes(&mut challenge);
                let mut id = [0u8; 1];
                rng.fill_bytes(&mut id);
                self.algorithm = Some(alg);
                self.id = id[0];
                self.challenge = challenge;
                self.state = State::Response;
                out.push("CHAP_A", &alg.code().to_string());
                out.push("CHAP_I", &self.id.to_string());
                out.push("CHAP_C", &encode_hex(&self.challenge));
                Ok(ChapProgress::InProgress)
            }
            State::Response => {
                if let Some(kv) = keys.iter().find(|kv| {
                    !matches!(kv.key.as_str(), "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C")
                }) {
                    return Err(ChapError::Sequence(kv.key.clone()));
                }
                if keys.is_empty() {
                    return Ok(ChapProgress::InProgress);
                }
                let alg = self.algorithm.expect("chosen with the challenge");
                let name = get("CHAP_N").ok_or(ChapError::Missing("CHAP_N"))?;
                let resp = get("CHAP_R").ok_or(ChapError::Missing("CHAP_R"))?;
                if name.is_empty() || name.len() > MAX_NAME_LEN {
                    return Err(ChapError::Malformed("CHAP_N"));
                }
                let resp = decode_binary(resp).ok_or(ChapError::Malformed("CHAP_R"))?;
                // Check the initiator first; an unknown user is compared
                // against a dummy secret so it takes as long as a wrong one.
                let account = self.accounts.incoming.iter().find(|a| a.user == name);
                let secret = account.map(|a| a.secret.as_slice()).unwrap_or(b"");
                let want = alg.response(self.id, secret, &self.challenge);
                let ok: bool = want.ct_eq(&resp).into();
                if !ok || account.is_none() {
                    return Err(ChapError::BadResponse);
                }
                // Mutual CHAP: the initiator's own challenge (§12.1.3).
                match (get("CHAP_I"), get("CHAP_C")) {
                    (None, None) if self.accounts.require_mutual => {
                        return Err(ChapError::Missing("CHAP_I"))
                    }
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let id = parse_number(i)
                            .and_then(|n| u8::try_from(n).ok())
                            .ok_or(ChapError::Malformed("CHAP_I"))?;
                        let c = decode_binary(c).ok_or(ChapError::Malformed("CHAP_C"))?;
                        if bool::from(c.ct_eq(&self.challenge)) {
                            return Err(ChapError::Reflected);
                        }
                        let ours = self
                            .accounts
                            .outgoing_for
                            .iter()
                            .find(|(u, _)| u == name)
                            .map(|(_, c)| c)
                            .or(self.accounts.outgoing.as_ref())
                            .ok_or(ChapError::NoOutgoingAccount)?;
                        out.push("CHAP_N", &ours.user);
                        out.push("CHAP_R", &encode_hex(&alg.response(id, &ours.secret, &c)));
                        self.mutual = true;
                    }
                    (None, Some(_)) => return Err(ChapError::Missing("CHAP_I")),
                    (Some(_), None) => return Err(ChapError::Missing("CHAP_C")),
                }
                self.user = Some(name.to_owned());
                self.state = State::Done;
                Ok(ChapProgress::Done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue::new(k, v)
    }

    fn pairs(out: &TextBuilder) -> Vec<KeyValue> {
        crate::text::parse(out.as_bytes()).unwrap()
    }

    fn get<'a>(p: &'a [KeyValue], k: &str) -> &'a str {
        &p.iter().find(|kv| kv.key == k).unwrap().value
    }

    fn accounts() -> ChapAccounts {
        ChapAccounts {
            incoming: vec![
                ChapCredentials::new("alice", "alice-secret-1"),
                ChapCredentials::new("bob", "bob-secret-123"),
            ],
            outgoing: Some(ChapCredentials::new("target", "target-secret-9")),
            ..ChapAccounts::default()
        }
    }

    /// Start an exchange with `algs`; returns (server, id, challenge).
    fn start(algs: &str, acc: ChapAccounts) -> (ChapServer, u8, Vec<u8>) {
        let mut s = ChapServer::new(acc);
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = TextBuilder::new();
        assert_eq!(
            s.handle(&[kv("CHAP_A", algs)], &mut rng, &mut out),
            Ok(ChapProgress::InProgress)
        );
        let p = pairs(&out);
        assert_eq!(p[0].key, "CHAP_A");
        let id: u8 = get(&p, "CHAP_I").parse().unwrap();
        let c = decode_binary(get(&p, "CHAP_C")).unwrap();
        assert_eq!(c, s.challenge());
        (s, id, c)
    }

    fn answer(s: &mut ChapServer, keys: &[KeyValue]) -> Result<Vec<KeyValue>, ChapError> {
        let mut out = TextBuilder::new();
        let mut rng = StdRng::seed_from_u64(8);
        s.handle(keys, &mut rng, &mut out).map(|_| pairs(&out))
    }

    #[test]
    fn known_answer_vectors() {
        // H(0x01 || "secret" || 0x00..0x0f), computed by hand with each
        // hash crate, then pinned for MD5 to an independent value.
        let c: Vec<u8> = (0u8..16).collect();
        let mut input = vec![1u8];
        input.extend_from_slice(b"secret");
        input.extend_from_slice(&c);
        assert_eq!(
            ChapAlgorithm::Md5.response(1, b"secret", &c),
            md5::Md5::digest(&input).to_vec()
        );
        assert_eq!(
            ChapAlgorithm::Sha1.response(1, b"secret", &c),
            sha1::Sha1::digest(&input).to_vec()
        );
        assert_eq!(
            ChapAlgorithm::Sha256.response(1, b"secret", &c),
            sha2::Sha256::digest(&input).to_vec()
        );
        assert_eq!(
            ChapAlgorithm::Sha3_256.response(1, b"secret", &c),
            sha3::Sha3_256::digest(&input).to_vec()
        );
        // Fixed vectors: MD5("") and SHA-256("abc") through the same path
        // (id 0x61 'a', secret "b", challenge "c" is "abc").
        assert_eq!(
            encode_hex(&ChapAlgorithm::Sha256.response(b'a', b"b", b"c")),
            "0xba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            encode_hex(&ChapAlgorithm::Md5.response(b'a', b"b", b"c")),
            "0x900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            encode_hex(&ChapAlgorithm::Sha1.response(b'a', b"b", b"c")),
            "0xa9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            encode_hex(&ChapAlgorithm::Sha3_256.response(b'a', b"b", b"c")),
            "0x3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
        for a in ChapAlgorithm::ALL {
            assert_eq!(a.response(0, b"x", b"y").len(), a.digest_len());
            assert_eq!(ChapAlgorithm::from_code(a.code() as u64), Some(a));
            assert!(a.challenge_len() >= 16 && a.challenge_len() >= a.digest_len());
        }
        assert_eq!(ChapAlgorithm::from_code(7), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::from_code(4), None);
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0XaFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0BAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQI"), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        for bad in [
            "", "0x", "0b", "ab", "0xzz", "0b!!!!", "0bA", "0bAQ=", "12", "0b====",
        ] {
            assert_eq!(decode_binary(bad), None, "{bad:?}");
        }
        assert!(decode_binary(&format!("0x{}", "ab".repeat(MAX_BINARY_LEN))).is_some());
        assert!(decode_binary(&format!("0x{}", "ab".repeat(MAX_BINARY_LEN + 1))).is_none());
        for n in 0..70 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            if n > 0 {
                assert_eq!(decode_binary(&encode_hex(&b)), Some(b.clone()));
                assert_eq!(decode_binary(&encode_base64(&b)), Some(b.clone()));
            }
        }
        assert_eq!(encode_base64(b"abc"), "0bYWJj");
        assert_eq!(encode_base64(b"ab"), "0bYWI=");
        assert_eq!(parse_number("17"), Some(17));
        assert_eq!(parse_number("0x11"), Some(17));
        assert_eq!(parse_number("x"), None);
        assert_eq!(parse_number("-1"), None);
    }

    #[test]
    fn algorithm_choice_follows_the_initiators_order() {
        assert_eq!(pick_algorithm("5"), Some(ChapAlgorithm::Md5));
        assert_eq!(pick_algorithm("7,5"), Some(ChapAlgorithm::Sha256));
        assert_eq!(pick_algorithm("5,7"), Some(ChapAlgorithm::Md5));
        assert_eq!(pick_algorithm("99,x,8,5"), Some(ChapAlgorithm::Sha3_256));
        assert_eq!(pick_algorithm("1,2,3"), None);
        let mut s = ChapServer::new(accounts());
        let mut out = TextBuilder::new();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            s.handle(&[kv("CHAP_A", "4,3")], &mut rng, &mut out),
            Err(ChapError::NoAlgorithm)
        );
        assert_eq!(
            s.handle(&[kv("CHAP_A", "5")], &mut rng, &mut out),
            Err(ChapError::Failed)
        );
    }

    #[test]
    fn one_way_every_algorithm_hex_and_base64() {
        for a in ChapAlgorithm::ALL {
            for b64 in [false, true] {
                let (mut s, id, c) = start(&format!("{},5", a.code()), accounts());
                assert_eq!(s.algorithm(), Some(a));
                assert_eq!(c.len(), a.challenge_len());
                let r = a.response(id, b"bob-secret-123", &c);
                let r = if b64 {
                    encode_base64(&r)
                } else {
                    encode_hex(&r)
                };
                let got = answer(&mut s, &[kv("CHAP_N", "bob"), kv("CHAP_R", &r)]).unwrap();
                assert!(got.is_empty(), "no mutual keys");
                assert!(s.is_done() && !s.mutual());
                assert_eq!(s.user(), Some("bob"));
            }
        }
    }

    #[test]
    fn challenges_are_fresh() {
        let (_, _, c1) = start("5", accounts());
        let mut s = ChapServer::new(accounts());
        let mut out = TextBuilder::new();
        s.handle(&[kv("CHAP_A", "5")], &mut rand::thread_rng(), &mut out)
            .unwrap();
        let mut s2 = ChapServer::new(accounts());
        s2.handle(&[kv("CHAP_A", "5")], &mut rand::thread_rng(), &mut out)
            .unwrap();
        assert_ne!(s.challenge(), s2.challenge());
        assert_ne!(s.challenge(), c1.as_slice());
    }

    #[test]
    fn wrong_secret_unknown_user_and_bad_values_fail() {
        type Case = Box<dyn Fn(u8, &[u8]) -> Vec<KeyValue>>;
        let cases: Vec<Case> = vec![
            Box::new(|id, c| {
                let r = ChapAlgorithm::Md5.response(id, b"wrong-secret", c);
                vec![kv("CHAP_N", "alice"), kv("CHAP_R", &encode_hex(&r))]
            }),
            // Bob's secret under Alice's name.
            Box::new(|id, c| {
                let r = ChapAlgorithm::Md5.response(id, b"bob-secret-123", c);
                vec![kv("CHAP_N", "alice"), kv("CHAP_R", &encode_hex(&r))]
            }),
            Box::new(|id, c| {
                let r = ChapAlgorithm::Md5.response(id, b"", c);
                vec![kv("CHAP_N", "mallory"), kv("CHAP_R", &encode_hex(&r))]
            }),
            // Wrong identifier.
            Box::new(|id, c| {
                let r = ChapAlgorithm::Md5.response(id.wrapping_add(1), b"alice-secret-1", c);
                vec![kv("CHAP_N", "alice"), kv("CHAP_R", &encode_hex(&r))]
            }),
            // Truncated response.
            Box::new(|id, c| {
                let r = ChapAlgorithm::Md5.response(id, b"alice-secret-1", c);
                vec![kv("CHAP_N", "alice"), kv("CHAP_R", &encode_hex(&r[..15]))]
            }),
            Box::new(|_, _| vec![kv("CHAP_N", "alice")]),
            Box::new(|_, _| vec![kv("CHAP_R", "0x00")]),
            Box::new(|_, _| vec![kv("CHAP_N", "alice"), kv("CHAP_R", "zz")]),
            Box::new(|_, _| vec![kv("CHAP_A", "5")]),
        ];
        for (i, f) in cases.iter().enumerate() {
            let (mut s, id, c) = start("5", accounts());
            let e = answer(&mut s, &f(id, &c)).unwrap_err();
            assert_eq!(e.login_status(), LoginStatus::AUTHENTICATION_FAILURE, "{i}");
            assert!(!s.is_done());
        }
        // A response before the challenge.
        let mut s = ChapServer::new(accounts());
        assert!(matches!(
            answer(&mut s, &[kv("CHAP_N", "alice"), kv("CHAP_R", "0x00")]),
            Err(ChapError::Sequence(_))
        ));
        // No accounts at all: nobody gets in.
        let (mut s, id, c) = start("5", ChapAccounts::default());
        let r = ChapAlgorithm::Md5.response(id, b"", &c);
        assert_eq!(
            answer(&mut s, &[kv("CHAP_N", "x"), kv("CHAP_R", &encode_hex(&r))]),
            Err(ChapError::BadResponse)
        );
    }

    fn mutual_keys(id: u8, c: &[u8], my_id: u8, my_c: &[u8]) -> Vec<KeyValue> {
        let r = ChapAlgorithm::Sha256.response(id, b"alice-secret-1", c);
        vec![
            kv("CHAP_N", "alice"),
            kv("CHAP_R", &encode_hex(&r)),
            kv("CHAP_I", &my_id.to_string()),
            kv("CHAP_C", &encode_base64(my_c)),
        ]
    }

    #[test]
    fn mutual_success() {
        let (mut s, id, c) = start("7", accounts());
        let my_c = [0x5au8; 32];
        let got = answer(&mut s, &mutual_keys(id, &c, 200, &my_c)).unwrap();
        assert_eq!(get(&got, "CHAP_N"), "target");
        let want = ChapAlgorithm::Sha256.response(200, b"target-secret-9", &my_c);
        assert_eq!(decode_binary(get(&got, "CHAP_R")).unwrap(), want);
        assert!(s.is_done() && s.mutual());
        // Nothing more may follow.
        assert!(answer(&mut s, &[kv("CHAP_A", "5")]).is_err());
    }

    #[test]
    fn mutual_identity_per_initiator_and_required_mutual() {
        // SPDK auth groups: alice's secret carries its own mutual identity.
        let mut acc = accounts();
        acc.outgoing_for = vec![(
            "alice".into(),
            ChapCredentials::new("for-alice", "alice-mutual-77"),
        )];
        let (mut s, id, c) = start("7", acc.clone());
        let my_c = [0x33u8; 32];
        let got = answer(&mut s, &mutual_keys(id, &c, 9, &my_c)).unwrap();
        assert_eq!(get(&got, "CHAP_N"), "for-alice");
        let want = ChapAlgorithm::Sha256.response(9, b"alice-mutual-77", &my_c);
        assert_eq!(decode_binary(get(&got, "CHAP_R")).unwrap(), want);
        // With mutual CHAP required, a one-way answer is refused.
        acc.require_mutual = true;
        let (mut s, id, c) = start("7", acc);
        let mut keys = mutual_keys(id, &c, 9, &my_c);
        keys.truncate(2);
        assert_eq!(answer(&mut s, &keys), Err(ChapError::Missing("CHAP_I")));
    }

    #[test]
    fn mutual_failures() {
        // Reflected challenge.
        let (mut s, id, c) = start("7", accounts());
        assert_eq!(
            answer(&mut s, &mutual_keys(id, &c, id, &c)),
            Err(ChapError::Reflected)
        );
        // No outgoing account.
        let mut acc = accounts();
        acc.outgoing = None;
        let (mut s, id, c) = start("7", acc);
        assert_eq!(
            answer(&mut s, &mutual_keys(id, &c, 1, &[1; 16])),
            Err(ChapError::NoOutgoingAccount)
        );
        // Half a challenge, bad identifier.
        for k in ["CHAP_I", "CHAP_C"] {
            let (mut s, id, c) = start("7", accounts());
            let mut keys = mutual_keys(id, &c, 1, &[1; 16]);
            keys.retain(|kv| kv.key != k);
            assert!(matches!(answer(&mut s, &keys), Err(ChapError::Missing(_))));
        }
        let (mut s, id, c) = start("7", accounts());
        let mut keys = mutual_keys(id, &c, 1, &[1; 16]);
        keys[2].value = "256".into();
        assert_eq!(answer(&mut s, &keys), Err(ChapError::Malformed("CHAP_I")));
        // The target never answers a mutual challenge for an initiator that
        // failed its own check.
        let (mut s, id, c) = start("7", accounts());
        let mut keys = mutual_keys(id, &c, 1, &[1; 16]);
        keys[1].value = encode_hex(&[0u8; 32]);
        assert_eq!(answer(&mut s, &keys), Err(ChapError::BadResponse));
    }

    #[test]
    fn debug_hides_secrets() {
        let s = format!("{:?} {:?}", accounts(), ChapServer::new(accounts()));
        assert!(!s.contains("secret-"), "{s}");
    }
}
