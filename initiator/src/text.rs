//! Login and Text key=value data (RFC 7143 §6.1): `key=value` pairs, each
//! terminated by a NUL byte.

/// Encode pairs as `key=value\0...`.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parse `key=value\0...`. Empty strings between NULs (padding a sloppy
/// peer left) are skipped; an item without `=` becomes a key with an empty value.
pub fn parse(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            match s.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (s.to_string(), String::new()),
            }
        })
        .collect()
}

/// Group a SendTargets answer (RFC 7143 Appendix C): each `TargetName` is
/// followed by zero or more `TargetAddress` keys belonging to it.
pub fn group_send_targets(pairs: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "TargetName" => out.push((v.clone(), Vec::new())),
            "TargetAddress" => {
                if let Some(last) = out.last_mut() {
                    last.1.push(v.clone());
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let p = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x=y".to_string()),
        ];
        let e = encode(&p);
        assert_eq!(e, b"A=1\0B=x=y\0");
        assert_eq!(parse(&e), p);
        assert_eq!(
            parse(b"A=1\0\0\0"),
            vec![("A".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn groups_targets() {
        let p = parse(b"TargetName=iqn.a\0TargetAddress=1.2.3.4:3260,1\0TargetName=iqn.b\0");
        let g = group_send_targets(&p);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].1, vec!["1.2.3.4:3260,1".to_string()]);
        assert!(g[1].1.is_empty());
    }
}
