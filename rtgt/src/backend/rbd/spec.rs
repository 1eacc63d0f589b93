//! An RBD LUN's path and `--bsopts`, as tgt's `bs_rbd` takes them.

/// Where an image is and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    pub pool: String,
    pub image: String,
    pub snap: Option<String>,
    /// `conf=`: the ceph.conf to read (librados' default search if unset).
    pub conf: Option<String>,
    /// `id=`: the client id (`client.<id>`; `admin` if unset).
    pub id: Option<String>,
    /// `cluster=`: the cluster name (`ceph` if unset).
    pub cluster: Option<String>,
    /// Other `key=value` options, set on the cluster handle in order.
    pub options: Vec<(String, String)>,
}

impl RbdSpec {
    /// Parse tgt's path `[pool/]image[@snap]` and `bsopts`
    /// (`;`-separated `key=value`).
    pub fn parse(path: &str, bsopts: Option<&str>) -> Result<RbdSpec, String> {
        let (pool, rest) = match path.split_once('/') {
            Some((p, r)) => (p, r),
            None => ("rbd", path),
        };
        let (image, snap) = match rest.split_once('@') {
            Some((i, s)) => (i, Some(s.to_string())),
            None => (rest, None),
        };
        if pool.is_empty() || image.is_empty() || snap.as_deref() == Some("") {
            return Err(format!("bad rbd image path '{path}'"));
        }
        let mut spec = RbdSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            snap,
            conf: None,
            id: None,
            cluster: None,
            options: Vec::new(),
        };
        for o in bsopts.unwrap_or("").split(';').map(str::trim) {
            if o.is_empty() {
                continue;
            }
            let Some((k, v)) = o.split_once('=') else {
                return Err(format!("bad rbd option '{o}'"));
            };
            let v = v.to_string();
            match k.trim() {
                "conf" => spec.conf = Some(v),
                "id" => spec.id = Some(v),
                "cluster" => spec.cluster = Some(v),
                k if !k.is_empty() => spec.options.push((k.to_string(), v)),
                _ => return Err(format!("bad rbd option '{o}'")),
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_options_parse_as_tgt_names_them() {
        let s = RbdSpec::parse("disk1", None).unwrap();
        assert_eq!(
            (s.pool.as_str(), s.image.as_str(), s.snap.as_deref()),
            ("rbd", "disk1", None)
        );
        let s = RbdSpec::parse(
            "vols/disk1@before",
            Some("conf=/etc/ceph/ceph.conf;id=admin;cluster=ceph;rbd_cache=true"),
        )
        .unwrap();
        assert_eq!(s.pool, "vols");
        assert_eq!(s.image, "disk1");
        assert_eq!(s.snap.as_deref(), Some("before"));
        assert_eq!(s.conf.as_deref(), Some("/etc/ceph/ceph.conf"));
        assert_eq!(s.id.as_deref(), Some("admin"));
        assert_eq!(s.cluster.as_deref(), Some("ceph"));
        assert_eq!(s.options, [("rbd_cache".to_string(), "true".to_string())]);
        for bad in ["", "/img", "pool/", "pool/img@"] {
            assert!(RbdSpec::parse(bad, None).is_err(), "{bad}");
        }
        assert!(RbdSpec::parse("img", Some("conf")).is_err());
    }
}
