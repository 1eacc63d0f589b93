//! Checks tgt-admin makes while it applies a target (missing values,
//! options given twice, unsupported shapes), made on the whole file before
//! anything is applied, so a bad file changes nothing and the error names
//! its file and line.

use super::conf::{Block, ConfError, Loc, Value};

/// Target options tgt-admin requires to be given once.
const SINGLE: &[&str] = &[
    "lun",
    "scsi_id",
    "sense_format",
    "removable",
    "online",
    "path",
    "readonly",
    "vendor_id",
    "product_id",
    "product_rev",
    "scsi_sn",
    "lbppbe",
    "la_lba",
    "optimal_xfer_gran",
    "optimal_xfer_len",
    "device-type",
    "bs-type",
    "bsopts",
    "bsoflags",
    "block-size",
    "write-cache",
    "controller_tid",
    "driver",
    "allow-in-use",
];

fn fail<T>(loc: Loc, msg: impl Into<String>) -> Result<T, ConfError> {
    Err(ConfError {
        loc,
        msg: msg.into(),
    })
}

fn need_value(opt: &str, v: &Value, target: &str) -> Result<(), ConfError> {
    for it in v.items() {
        if !it.has_length() {
            let t = if target.is_empty() {
                String::new()
            } else {
                format!(" (target: {target})")
            };
            return fail(it.loc(), format!("option {opt} has a missing value{t}"));
        }
    }
    Ok(())
}

fn need_single(opt: &str, v: &Value, target: &str) -> Result<(), ConfError> {
    if v.is_ref() {
        let l = match v {
            Value::List(l) => l.get(1).map(Value::loc).unwrap_or_else(|| v.loc()),
            _ => v.loc(),
        };
        return fail(
            l,
            format!("multiple '{opt}' definitions not allowed (target: {target})"),
        );
    }
    Ok(())
}

fn need_user_pass(opt: &str, v: &Value, target: &str) -> Result<(), ConfError> {
    for it in v.items() {
        let s = it.as_str().unwrap_or("");
        let parts: Vec<&str> = s.split(' ').collect();
        if parts.get(1).is_none_or(|p| p.is_empty()) || it.is_ref() {
            return fail(
                it.loc(),
                format!("option {opt} needs \"USER PASSWORD\" (target: {target})"),
            );
        }
    }
    Ok(())
}

/// Check a parsed configuration the way tgt-admin would while applying it.
pub fn validate(conf: &Block) -> Result<(), ConfError> {
    for (k, v) in &conf.entries {
        match k.as_str() {
            "default-driver" | "control-port" | "iSNS" | "iSNSServerIP" | "iSNSServerPort"
            | "iSNSAccessControl" | "ignore-errors" => {
                need_single(k, v, "")?;
                need_value(k, v, "")?;
            }
            "incomingdiscoveryuser" | "outgoingdiscoveryuser" => {
                need_single(k, v, "")?;
                need_user_pass(k, v, "")?;
            }
            "target" => {
                let Value::Block(targets) = v else {
                    return fail(
                        v.loc(),
                        "'target' must be a block: <target NAME> ... </target>",
                    );
                };
                for (name, t) in &targets.entries {
                    let Value::Block(t) = t else {
                        return fail(
                            t.loc(),
                            format!("<target> needs a name (found option '{name}' in it)"),
                        );
                    };
                    target(name, t)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn target(name: &str, t: &Block) -> Result<(), ConfError> {
    for (k, v) in &t.entries {
        if !v.has_length() {
            need_value(k, v, name)?;
        }
        if SINGLE.contains(&k.as_str()) {
            need_single(k, v, name)?;
        }
        match k.as_str() {
            "backing-store" | "direct-store" => {
                if k == "direct-store" && !in_path("sg_inq") {
                    return fail(
                        v.loc(),
                        "command 'sg_inq' (needed by 'option direct-store') is not in your path",
                    );
                }
                match v {
                    Value::Scalar(..) => {}
                    Value::List(l) => {
                        for it in l {
                            if it.is_ref() {
                                return fail(
                                    it.loc(),
                                    format!(
                                        "'{k} PATH' lines and <{k} PATH> blocks can't be mixed \
                                         in one target (target: {name})"
                                    ),
                                );
                            }
                            need_value(k, it, name)?;
                        }
                    }
                    Value::Block(stores) => {
                        for (path, s) in &stores.entries {
                            let Value::Block(s) = s else {
                                return fail(
                                    s.loc(),
                                    format!("'{k} PATH' lines and <{k} PATH> blocks can't be mixed in one target (target: {name}, {path})"),
                                );
                            };
                            for (o, ov) in &s.entries {
                                need_value(o, ov, name)?;
                                if o != "mode_page" && o != "params" {
                                    need_single(o, ov, name)?;
                                }
                                if matches!(ov, Value::Block(_)) {
                                    return fail(ov.loc(), format!("<{o}> blocks are not allowed in <{k}> (target: {name})"));
                                }
                            }
                        }
                    }
                }
            }
            "incominguser" | "outgoinguser" => need_user_pass(k, v, name)?,
            "initiator-address" | "initiator-name" => need_value(k, v, name)?,
            "controller_tid" if v.as_str().and_then(|s| s.parse::<u32>().ok()).is_none() => {
                return fail(
                    v.loc(),
                    format!("controller_tid must be a number (target: {name})"),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether an executable of that name is on `$PATH`.
pub fn in_path(cmd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .any(|p| {
            p.is_file()
                && p.metadata()
                    .map(|m| m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
        })
}
