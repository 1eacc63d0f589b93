//! The per-target iSCSI session parameters that `tgtadm --mode target --op
//! update --name K --value V` sets and `--op show --tid N` lists: the same
//! keys, order, ranges, defaults and text forms as tgt 1.0.85
//! (`usr/iscsi/param.c` and `iscsi_target_create`).
//!
//! These are the target's *offers*; RFC 7143 section 13 defines each key and
//! how the negotiated value is computed from both sides' offers.

/// How a key's value is written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A number in `min..=max` (RFC 7143 "numerical" keys).
    Number,
    /// A number that may also be 0 ("unlimited").
    NumberOrZero,
    /// `Yes` / `No`.
    Bool,
    /// A digest list: `None`, `CRC32C` or both; stored as a bit mask
    /// ([`DIGEST_NONE`] | [`DIGEST_CRC32C`]).
    Digest,
    /// OFMarkInt / IFMarkInt: shown `Reject` (markers are not supported,
    /// RFC 7143 section 13.25 was dropped from the standard) or `Irrelevant`.
    Marker,
}

/// Digest bit: no digest.
pub const DIGEST_NONE: u32 = 1;
/// Digest bit: CRC32C (RFC 7143 section 13.1).
pub const DIGEST_CRC32C: u32 = 2;

/// One session key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    /// The iSCSI key name (case-insensitive on update).
    pub name: &'static str,
    /// The target default (tgt's `default_tgt_session_param`).
    pub default: u32,
    /// Smallest accepted value.
    pub min: u32,
    /// Largest accepted value.
    pub max: u32,
    /// Text form.
    pub kind: KeyKind,
}

const fn k(name: &'static str, default: u32, min: u32, max: u32, kind: KeyKind) -> KeyDef {
    KeyDef {
        name,
        default,
        min,
        max,
        kind,
    }
}

/// Number of session keys.
pub const NR_KEYS: usize = 24;

/// The keys, in tgt's order (the order `show` prints them).
pub const SESSION_KEYS: [KeyDef; NR_KEYS] = [
    k(
        "MaxRecvDataSegmentLength",
        8192,
        512,
        16777215,
        KeyKind::Number,
    ),
    k("HeaderDigest", DIGEST_NONE, DIGEST_NONE, 3, KeyKind::Digest),
    k("DataDigest", DIGEST_NONE, DIGEST_NONE, 3, KeyKind::Digest),
    k("InitialR2T", 1, 0, 1, KeyKind::Bool),
    k("MaxOutstandingR2T", 1, 1, 65535, KeyKind::Number),
    k("ImmediateData", 1, 0, 1, KeyKind::Bool),
    k("FirstBurstLength", 65536, 512, 16777215, KeyKind::Number),
    k("MaxBurstLength", 262144, 512, 16777215, KeyKind::Number),
    k("DataPDUInOrder", 1, 0, 1, KeyKind::Bool),
    k("DataSequenceInOrder", 1, 0, 1, KeyKind::Bool),
    k("ErrorRecoveryLevel", 0, 0, 2, KeyKind::Number),
    k("IFMarker", 0, 0, 1, KeyKind::Bool),
    k("OFMarker", 0, 0, 1, KeyKind::Bool),
    k("DefaultTime2Wait", 2, 0, 3600, KeyKind::Number),
    k("DefaultTime2Retain", 20, 0, 3600, KeyKind::Number),
    k("OFMarkInt", 2048, 1, 65535, KeyKind::Marker),
    k("IFMarkInt", 2048, 1, 65535, KeyKind::Marker),
    k("MaxConnections", 1, 1, 65535, KeyKind::Number),
    // iSER (RFC 7145) key; tgt's target default is Yes.
    k("RDMAExtensions", 1, 0, 1, KeyKind::Bool),
    k(
        "TargetRecvDataSegmentLength",
        262144,
        512,
        16777215,
        KeyKind::Number,
    ),
    k(
        "InitiatorRecvDataSegmentLength",
        262144,
        512,
        16777215,
        KeyKind::Number,
    ),
    k(
        "MaxOutstandingUnexpectedPDUs",
        0,
        2,
        u32::MAX,
        KeyKind::NumberOrZero,
    ),
    // "Local" parameters, never sent to the initiator.
    k(
        "MaxXmitDataSegmentLength",
        8192,
        512,
        16777215,
        KeyKind::Number,
    ),
    k("MaxQueueCmd", 128, 1, 512, KeyKind::Number),
];

/// A value refused for a key (malformed or out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for {0}")]
pub struct BadValue(pub &'static str);

/// Index of a key by name, case-insensitively (tgt uses `strcasecmp`).
pub fn key_index(name: &str) -> Option<usize> {
    SESSION_KEYS
        .iter()
        .position(|k| k.name.eq_ignore_ascii_case(name))
}

/// A target's session parameter values, indexed like [`SESSION_KEYS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams(pub [u32; NR_KEYS]);

impl Default for SessionParams {
    fn default() -> Self {
        let mut v = [0u32; NR_KEYS];
        for (i, k) in SESSION_KEYS.iter().enumerate() {
            v[i] = k.default;
        }
        SessionParams(v)
    }
}

impl SessionParams {
    /// The raw value of a key (by name, case-insensitive).
    pub fn get(&self, name: &str) -> Option<u32> {
        key_index(name).map(|i| self.0[i])
    }

    /// The value of a key as `show` prints it.
    pub fn text(&self, idx: usize) -> String {
        value_text(idx, self.0[idx])
    }

    /// Parse and range-check `text` for key `idx` and store it; a value
    /// out of range or malformed is refused (nothing changes).
    pub fn set_text(&mut self, idx: usize, text: &str) -> Result<(), BadValue> {
        let v = parse_value(idx, text, self.0[idx])?;
        self.0[idx] = v;
        Ok(())
    }
}

/// The text form of a value.
pub fn value_text(idx: usize, v: u32) -> String {
    match SESSION_KEYS[idx].kind {
        KeyKind::Number | KeyKind::NumberOrZero => v.to_string(),
        KeyKind::Bool => match v {
            0 => "No".into(),
            1 => "Yes".into(),
            // tgt's bool_val_to_str leaves the buffer untouched here.
            _ => String::new(),
        },
        KeyKind::Digest => {
            if v & DIGEST_CRC32C != 0 {
                "CRC32C".into()
            } else if v & DIGEST_NONE != 0 {
                "None".into()
            } else {
                String::new()
            }
        }
        KeyKind::Marker => {
            if v == 0 {
                "Irrelevant".into()
            } else {
                "Reject".into()
            }
        }
    }
}

/// Parse a value as tgt's `param_str_to_val` + `param_check_val` do.
/// `current` is returned for marker keys, which tgt accepts without parsing.
pub fn parse_value(idx: usize, text: &str, current: u32) -> Result<u32, BadValue> {
    let key = &SESSION_KEYS[idx];
    let bad = BadValue(key.name);
    match key.kind {
        KeyKind::Number => {
            // range_str_to_val: strtol(str, NULL, 0) into an unsigned int.
            let v = super::request::c_strtoul_u32(text);
            if v < key.min || v > key.max {
                return Err(bad);
            }
            Ok(v)
        }
        KeyKind::NumberOrZero => {
            let v = super::request::c_strtoul_u32(text);
            if v != 0 && (v < key.min || v > key.max) {
                return Err(bad);
            }
            Ok(v)
        }
        KeyKind::Bool => match text {
            "Yes" => Ok(1),
            "No" => Ok(0),
            _ => Err(bad),
        },
        KeyKind::Digest => {
            let mut v = DIGEST_NONE;
            for part in text.split(',') {
                if part.starts_with("None") {
                    v |= DIGEST_NONE;
                } else if part.starts_with("CRC32C") {
                    v |= DIGEST_CRC32C;
                } else {
                    return Err(bad);
                }
            }
            Ok(v)
        }
        KeyKind::Marker => Ok(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parse() {
        let mut p = SessionParams::default();
        assert_eq!(p.get("maxqueuecmd"), Some(128));
        let i = key_index("MaxRecvDataSegmentLength").unwrap();
        assert!(p.set_text(i, "1").is_err());
        assert_eq!(p.0[i], 8192);
        p.set_text(i, "0x10000").unwrap();
        assert_eq!(p.text(i), "65536");
        let d = key_index("HeaderDigest").unwrap();
        p.set_text(d, "CRC32C,None").unwrap();
        assert_eq!(p.text(d), "CRC32C");
        assert!(p.set_text(d, "MD5").is_err());
        let b = key_index("InitialR2T").unwrap();
        assert!(p.set_text(b, "yes").is_err());
        p.set_text(b, "No").unwrap();
        assert_eq!(p.text(b), "No");
    }
}
