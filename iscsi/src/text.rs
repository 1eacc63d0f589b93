//! Text key=value data segments (RFC 7143 §6.1): parsing with hard limits,
//! encoding, accumulation of a text spread over several PDUs (C bit) and
//! splitting of a long answer into PDU-sized pieces.
//!
//! Every limit is checked before anything grows, so a hostile initiator can
//! neither make the parser panic nor make it allocate without bound.

use crate::pdu::RejectReason;
use crate::status::LoginStatus;

/// Longest key name (RFC 7143 §6.1: "key names ... up to 63 bytes").
pub const MAX_KEY_LEN: usize = 63;
/// Longest value of a standard key (RFC 7143 §6.1: 255 bytes unless the key
/// says otherwise).
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of a key that carries large binary data (CHAP_C / CHAP_R in
/// hex or base64, RFC 7143 §12.1.3 and §6.1 "binary-value" up to 8192 bytes).
pub const MAX_LONG_VALUE_LEN: usize = 8192;
/// Most pairs accepted in one text (a whole negotiation has fewer than 40
/// standard keys; this leaves room for extension keys).
pub const MAX_PAIRS: usize = 256;
/// Largest text accumulated across C-bit continuations. RFC 7143 §6.6
/// requires at least 8192 bytes per negotiation sequence; we allow 64 KiB.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// A malformed or oversized text. One variant per way a text can be bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The last pair is not terminated by a NUL byte (RFC 7143 §6.1: every
    /// key=value pair, the last included, ends with a NUL).
    #[error("text does not end with a NUL byte")]
    Unterminated,
    /// A pair has no `=` separating key and value.
    #[error("pair without '=': {0:?}")]
    NoEquals(String),
    /// The key name is empty.
    #[error("empty key name")]
    EmptyKey,
    /// The key name is longer than 63 bytes.
    #[error("key name of {0} bytes exceeds 63")]
    KeyTooLong(usize),
    /// The key name holds a byte outside RFC 7143 §6.1's key-name set
    /// (letters, digits, `.`, `-`, `+`, `@`, `_`; `#` allowed in `X#` keys).
    #[error("invalid character in key name {0:?}")]
    BadKey(String),
    /// A value is longer than the key allows.
    #[error("value of key {0} is {1} bytes, more than allowed")]
    ValueTooLong(String, usize),
    /// Key or value is not valid UTF-8 (RFC 7143 §6.1: text is UTF-8).
    #[error("text is not UTF-8")]
    NotUtf8,
    /// More than [`MAX_PAIRS`] pairs.
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
    /// The text accumulated across continuation PDUs exceeds [`MAX_TEXT_LEN`].
    #[error("text longer than {MAX_TEXT_LEN} bytes")]
    TooLarge,
}

impl TextError {
    /// The login status a malformed text in a Login Request earns: an
    /// initiator error (RFC 7143 §11.13.5, 0x0200).
    pub fn login_status(&self) -> LoginStatus {
        LoginStatus::INITIATOR_ERROR
    }
    /// The Reject reason for a malformed text in a Text Request (RFC 7143
    /// §11.17.1: protocol error).
    pub fn reject_reason(&self) -> RejectReason {
        RejectReason::ProtocolError
    }
}

/// One key=value pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

fn key_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// The value limit of a key: long for keys that carry binary data.
fn value_limit(key: &str) -> usize {
    if key.starts_with("CHAP_") || key.starts_with("SRP_") || key.starts_with("KRB_") {
        MAX_LONG_VALUE_LEN
    } else {
        MAX_VALUE_LEN
    }
}

/// Parse a whole text (the data segment of one PDU, or several joined by
/// [`Accumulator`]). Empty pairs (runs of NULs, e.g. trailing padding some
/// initiators leave) are skipped; anything else malformed is an error.
pub fn parse(data: &[u8]) -> Result<Vec<KeyValue>, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLarge);
    }
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if *data.last().unwrap_or(&0) != 0 {
        return Err(TextError::Unterminated);
    }
    let mut out = Vec::new();
    // The final NUL leaves an empty piece after the split; it is skipped
    // like any other empty pair.
    for piece in data.split(|&b| b == 0) {
        if piece.is_empty() {
            continue;
        }
        if out.len() == MAX_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        let eq = match piece.iter().position(|&b| b == b'=') {
            Some(i) => i,
            None => {
                return Err(TextError::NoEquals(
                    String::from_utf8_lossy(&piece[..piece.len().min(MAX_KEY_LEN)]).into_owned(),
                ))
            }
        };
        let (k, v) = (&piece[..eq], &piece[eq + 1..]);
        if k.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong(k.len()));
        }
        if !k.iter().all(|&b| key_byte_ok(b)) {
            return Err(TextError::BadKey(String::from_utf8_lossy(k).into_owned()));
        }
        let key = std::str::from_utf8(k).map_err(|_| TextError::NotUtf8)?;
        if v.len() > value_limit(key) {
            return Err(TextError::ValueTooLong(key.to_owned(), v.len()));
        }
        let value = std::str::from_utf8(v).map_err(|_| TextError::NotUtf8)?;
        out.push(KeyValue::new(key, value));
    }
    Ok(out)
}

/// Builds a text: `key=value\0` per pair, in the order pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextBuilder {
    buf: Vec<u8>,
}

impl TextBuilder {
    pub fn new() -> TextBuilder {
        TextBuilder::default()
    }
    pub fn push(&mut self, key: &str, value: &str) -> &mut Self {
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(b'=');
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// Append another, already encoded, text.
    pub fn extend_raw(&mut self, text: &[u8]) {
        self.buf.extend_from_slice(text);
    }
}

/// Encode a list of pairs.
pub fn encode(pairs: &[KeyValue]) -> Vec<u8> {
    let mut b = TextBuilder::new();
    for kv in pairs {
        b.push(&kv.key, &kv.value);
    }
    b.into_bytes()
}

/// Joins the data segments of a text sent with the C bit over several PDUs
/// (RFC 7143 §11.10.2, §11.12.2): a pair may straddle two PDUs, so nothing
/// is parsed until the PDU with C=0 arrives.
#[derive(Debug, Clone, Default)]
pub struct Accumulator {
    buf: Vec<u8>,
}

impl Accumulator {
    pub fn new() -> Accumulator {
        Accumulator::default()
    }
    /// Add one PDU's data segment; fails once the total would pass
    /// [`MAX_TEXT_LEN`].
    pub fn push(&mut self, data: &[u8]) -> Result<(), TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_LEN {
            self.buf.clear();
            return Err(TextError::TooLarge);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }
    /// Whether a continued text is in progress.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Take the whole text accumulated so far, leaving the accumulator empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// Split a text into pieces of at most `max` bytes (at least 1). A pair may
/// be cut anywhere: the receiver joins pieces before parsing (RFC 7143 §6.1
/// lets key=value pairs span PDU boundaries). An empty text gives one empty
/// piece, so there is always a PDU to send.
pub fn split(text: &[u8], max: usize) -> Vec<Vec<u8>> {
    let max = max.max(1);
    if text.is_empty() {
        return vec![Vec::new()];
    }
    text.chunks(max).map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        let kv = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0Empty=\0").unwrap();
        assert_eq!(kv.len(), 3);
        assert_eq!(kv[0], KeyValue::new("InitiatorName", "iqn.x"));
        assert_eq!(kv[2], KeyValue::new("Empty", ""));
        // '=' inside a value belongs to the value
        assert_eq!(parse(b"X-a=b=c\0").unwrap()[0].value, "b=c");
        // trailing padding NULs are tolerated
        assert_eq!(parse(b"A=1\0\0\0").unwrap().len(), 1);
        assert_eq!(parse(b"").unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(b"A=1"), Err(TextError::Unterminated));
        assert_eq!(parse(b"A\0"), Err(TextError::NoEquals("A".into())));
        assert_eq!(parse(b"=1\0"), Err(TextError::EmptyKey));
        assert_eq!(parse(b"A B=1\0"), Err(TextError::BadKey("A B".into())));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(parse(long_key.as_bytes()), Err(TextError::KeyTooLong(64)));
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(parse(ok_key.as_bytes()).is_ok());
        let long_val = format!("A={}\0", "v".repeat(256));
        assert_eq!(
            parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong("A".into(), 256))
        );
        let chap = format!("CHAP_C=0x{}\0", "ab".repeat(1000));
        assert!(parse(chap.as_bytes()).is_ok());
        assert_eq!(parse(b"A=\xff\0"), Err(TextError::NotUtf8));
        let many: Vec<u8> = (0..257)
            .flat_map(|i| format!("X-{i}=1\0").into_bytes())
            .collect();
        assert_eq!(parse(&many), Err(TextError::TooManyPairs));
    }

    #[test]
    fn encode_roundtrip_and_split() {
        let pairs = vec![KeyValue::new("A", "1"), KeyValue::new("B", "two")];
        let t = encode(&pairs);
        assert_eq!(t, b"A=1\0B=two\0");
        assert_eq!(parse(&t).unwrap(), pairs);
        let pieces = split(&t, 4);
        assert_eq!(
            pieces,
            vec![b"A=1\0".to_vec(), b"B=tw".to_vec(), b"o\0".to_vec()]
        );
        let mut acc = Accumulator::new();
        for p in &pieces {
            acc.push(p).unwrap();
        }
        assert_eq!(parse(&acc.take()).unwrap(), pairs);
        assert!(acc.is_empty());
        assert_eq!(split(b"", 10), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn accumulator_is_bounded() {
        let mut acc = Accumulator::new();
        let chunk = vec![b'a'; 8192];
        for _ in 0..8 {
            acc.push(&chunk).unwrap();
        }
        assert_eq!(acc.push(b"x"), Err(TextError::TooLarge));
        assert!(acc.is_empty());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        // An alphabet rich in the bytes the parser cares about.
        let alphabet = b"A=\0=\0X-#.9 \xff\xc3\xa9z";
        for _ in 0..20_000 {
            let len = (next() % 96) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        r as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            if let Ok(kv) = parse(&data) {
                // whatever parses re-encodes to something that parses the same
                assert_eq!(parse(&encode(&kv)).unwrap(), kv);
            }
        }
    }
}
