//! tgtadm's command line (tgt 1.0.85 `usr/tgtadm.c`), option for option:
//! parsed the way glibc's `getopt_long` parses it, with tgtadm's checks
//! (`verify_mode_params`) and messages, into the [`Request`] tgtadm sends.
//! One parser for both clients: `rtgtadm`, and `rtgt-admin`, which reads
//! the tgtadm lines tgt-admin would run.
//!
//! Two options of rtgtadm's own, beyond tgtadm: `--json` (show and stat
//! answer a JSON document) and `--counters` (stat answers rtgt's per-object
//! counter table). They travel as the parameter items `json=1` /
//! `counters=1`, which the stock tgtadm never sends with show or stat.

use tgt_ipc::ipc;
use tgt_ipc::request::{c_strtoull, Mode, Op, Request, ACCOUNT_INCOMING, ACCOUNT_OUTGOING};

/// Messages carry tgtadm's name: scripts written for tgtadm match on them.
pub const PROG: &str = "tgtadm";
/// The tgtadm version whose interface this is.
pub const VERSION: &str = "1.0.85";
const EINVAL: i32 = libc::EINVAL;

/// What a command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Send this request to the daemon on this control port.
    Run {
        /// The request.
        req: Request,
        /// `-C`.
        control_port: u16,
    },
    /// `--help`: print [`HELP`], exit 0.
    Help,
    /// `--version`: print [`VERSION`], exit 0.
    Version,
}

/// A refused command line: what tgtadm prints on stderr, and its exit
/// status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stderr}")]
pub struct CliError {
    /// Complete lines for stderr.
    pub stderr: String,
    /// The exit status.
    pub code: i32,
}

impl CliError {
    /// `tgtadm: <msg>` with `code`.
    fn prog(msg: &str, code: i32) -> Self {
        CliError {
            stderr: format!("{PROG}: {msg}\n"),
            code,
        }
    }

    /// tgtadm's `usage(1)`: `lines`, then the pointer to --help; EINVAL.
    fn usage(lines: String) -> Self {
        CliError {
            stderr: format!("{lines}Try `{PROG} --help' for more information.\n"),
            code: EINVAL,
        }
    }
}

fn fail(msg: &str) -> CliError {
    CliError::prog(msg, EINVAL)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HasArg {
    No,
    Required,
}

/// `long_options` of tgtadm.
const LONG: &[(&str, HasArg, char)] = &[
    ("debug", HasArg::No, 'd'),
    ("help", HasArg::No, 'h'),
    ("version", HasArg::No, 'V'),
    ("lld", HasArg::Required, 'L'),
    ("op", HasArg::Required, 'o'),
    ("mode", HasArg::Required, 'm'),
    ("tid", HasArg::Required, 't'),
    ("sid", HasArg::Required, 's'),
    ("cid", HasArg::Required, 'c'),
    ("lun", HasArg::Required, 'l'),
    ("name", HasArg::Required, 'n'),
    ("value", HasArg::Required, 'v'),
    ("backing-store", HasArg::Required, 'b'),
    ("bstype", HasArg::Required, 'E'),
    ("bsopts", HasArg::Required, 'S'),
    ("bsoflags", HasArg::Required, 'f'),
    ("blocksize", HasArg::Required, 'y'),
    ("targetname", HasArg::Required, 'T'),
    ("initiator-address", HasArg::Required, 'I'),
    ("initiator-name", HasArg::Required, 'Q'),
    ("user", HasArg::Required, 'u'),
    ("password", HasArg::Required, 'p'),
    ("host", HasArg::Required, 'H'),
    ("force", HasArg::No, 'F'),
    ("params", HasArg::Required, 'P'),
    ("bus", HasArg::Required, 'B'),
    ("device-type", HasArg::Required, 'Y'),
    ("outgoing", HasArg::No, 'O'),
    ("control-port", HasArg::Required, 'C'),
];

/// tgtadm's short option string. Note that `-F` and `-O` take an argument
/// here although `--force` and `--outgoing` do not: tgtadm's quirk, kept.
const SHORT: &str = "dhVL:o:m:t:s:c:l:n:v:b:E:f:y:T:I:Q:u:p:H:F:P:B:Y:O:C:S:";

fn short_has_arg(c: char) -> Option<HasArg> {
    let b = SHORT.as_bytes();
    let i = SHORT.find(c)?;
    if c == ':' {
        return None;
    }
    Some(if b.get(i + 1) == Some(&b':') {
        HasArg::Required
    } else {
        HasArg::No
    })
}

/// One option as `getopt_long` returns it; `'?'` for an error (already
/// reported on stderr).
struct Opt {
    ch: char,
    arg: Option<String>,
}

impl Opt {
    fn err(msg: String) -> Self {
        Opt {
            ch: '?',
            arg: Some(msg),
        }
    }
}

/// glibc `getopt_long` with argument permutation: returns the options in
/// order and the non-option arguments.
fn getopt(args: &[String]) -> (Vec<Opt>, Vec<String>) {
    let mut opts = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            rest.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let exact = LONG.iter().find(|l| l.0 == name);
            let found = match exact {
                Some(l) => Some(*l),
                None => {
                    let cands: Vec<_> = LONG.iter().filter(|l| l.0.starts_with(name)).collect();
                    if cands.len() == 1 {
                        Some(*cands[0])
                    } else if cands.len() > 1 {
                        let list: Vec<String> =
                            cands.iter().map(|l| format!("'--{}'", l.0)).collect();
                        opts.push(Opt::err(format!(
                            "option '--{}' is ambiguous; possibilities: {}",
                            name,
                            list.join(" ")
                        )));
                        continue;
                    } else {
                        None
                    }
                }
            };
            let Some((lname, has, ch)) = found else {
                opts.push(Opt::err(format!("unrecognized option '--{name}'")));
                continue;
            };
            match has {
                HasArg::No => {
                    if inline.is_some() {
                        opts.push(Opt::err(format!(
                            "option '--{lname}' doesn't allow an argument"
                        )));
                    } else {
                        opts.push(Opt { ch, arg: None });
                    }
                }
                HasArg::Required => {
                    let v = match inline {
                        Some(v) => Some(v),
                        None if i < args.len() => {
                            i += 1;
                            Some(args[i - 1].clone())
                        }
                        None => None,
                    };
                    match v {
                        Some(v) => opts.push(Opt { ch, arg: Some(v) }),
                        None => {
                            opts.push(Opt::err(format!("option '--{lname}' requires an argument")));
                        }
                    }
                }
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                match short_has_arg(c) {
                    None => {
                        opts.push(Opt::err(format!("invalid option -- '{c}'")));
                    }
                    Some(HasArg::No) => opts.push(Opt { ch: c, arg: None }),
                    Some(HasArg::Required) => {
                        if j < chars.len() {
                            let v: String = chars[j..].iter().collect();
                            opts.push(Opt {
                                ch: c,
                                arg: Some(v),
                            });
                        } else if i < args.len() {
                            opts.push(Opt {
                                ch: c,
                                arg: Some(args[i].clone()),
                            });
                            i += 1;
                        } else {
                            opts.push(Opt::err(format!("option requires an argument -- '{c}'")));
                        }
                        break;
                    }
                }
            }
            continue;
        }
        rest.push(a.clone());
    }
    (opts, rest)
}

/// tgtadm's `--help` text, byte for byte.
pub const HELP: &str = "Linux SCSI Target administration utility, version 1.0.85\n\n\
Usage: tgtadm [OPTION]\n\
--lld <driver> --mode target --op new --tid <id> --targetname <name>\n\
\tadd a new target with <id> and <name>. <id> must not be zero.\n\
--lld <driver> --mode target --op delete [--force] --tid <id>\n\
\tdelete the specific target with <id>.\n\
\tWith force option, the specific target is deleted\n\
\teven if there is an activity.\n\
--lld <driver> --mode target --op show\n\
\tshow all the targets.\n\
--lld <driver> --mode target --op show --tid <id>\n\
\tshow the specific target's parameters.\n\
--lld <driver> --mode target --op update --tid <id> --name <param> --value <value>\n\
\tchange the target parameters of the target with <id>.\n\
--lld <driver> --mode target --op bind --tid <id> --initiator-address <address>\n\
--lld <driver> --mode target --op bind --tid <id> --initiator-name <name>\n\
\tenable the target to accept the specific initiators.\n\
--lld <driver> --mode target --op unbind --tid <id> --initiator-address <address>\n\
--lld <driver> --mode target --op unbind --tid <id> --initiator-name <name>\n\
\tdisable the specific permitted initiators.\n\
--lld <driver> --mode logicalunit --op new --tid <id> --lun <lun>\n\
\x20\x20--backing-store <path> --bstype <type> --bsopts <bs options> --bsoflags <options>\n\
\tadd a new logical unit with <lun> to the specific\n\
\ttarget with <id>. The logical unit is offered\n\
\tto the initiators. <path> must be block device files\n\
\t(including LVM and RAID devices) or regular files.\n\
\tbstype option is optional.\n\
\tbsopts are specific to the bstype.\n\
\tbsoflags supported options are sync and direct\n\
\t(sync:direct for both).\n\
--lld <driver> --mode logicalunit --op delete --tid <id> --lun <lun>\n\
\tdelete the specific logical unit with <lun> that\n\
\tthe target with <id> has.\n\
--lld <driver> --mode account --op new --user <name> --password <pass>\n\
\tadd a new account with <name> and <pass>.\n\
--lld <driver> --mode account --op delete --user <name>\n\
\tdelete the specific account having <name>.\n\
--lld <driver> --mode account --op bind --tid <id> --user <name> [--outgoing]\n\
\tadd the specific account having <name> to\n\
\tthe specific target with <id>.\n\
\t<user> could be <IncomingUser> or <OutgoingUser>.\n\
\tIf you use --outgoing option, the account will\n\
\tbe added as an outgoing account.\n\
--lld <driver> --mode account --op unbind --tid <id> --user <name> [--outgoing]\n\
\tdelete the specific account having <name> from specific\n\
\ttarget. The --outgoing option must be added if you\n\
\tdelete an outgoing account.\n\
--lld <driver> --mode lld --op start\n\
\tStart the specified lld without restarting the tgtd process.\n\
--control-port <port> use control port <port>\n\
--help\n\
\tdisplay this help and exit\n\n\
Report bugs to <stgt@vger.kernel.org>.\n";

/// tgtadm's `str_to_int` family: strtoull with base 0, refusing no digits
/// and ULLONG_MAX (EINVAL), a value that does not fit (ERANGE).
fn str_to_int<T: TryFrom<u64>>(
    s: &str,
    ch: char,
    fits: impl Fn(u64) -> Option<T>,
) -> Result<T, CliError> {
    let (v, used) = c_strtoull(s, 0);
    if used == 0 || v == u64::MAX {
        return Err(CliError::usage(format!(
            "-{ch} argument value '{s}' invalid\n"
        )));
    }
    fits(v).ok_or_else(|| CliError::usage(format!("-{ch} argument value '{s}' out of range\n")))
}

/// `verify_mode_params`: the first option not in `allowed` (or `d`).
fn verify(opts: &[Opt], allowed: &str) -> Option<char> {
    opts.iter()
        .map(|o| o.ch)
        .find(|&c| !allowed.contains(c) && c != 'd')
}

fn device_type(s: &str) -> Result<u32, CliError> {
    Ok(match s {
        "disk" => 0x00,
        "tape" | "ssc" => 0x01,
        "cd" => 0x05,
        "changer" => 0x08,
        "osd" => 0x11,
        "pt" => 0xff,
        _ => return Err(CliError::prog(&format!("unknown target type: {s}"), EINVAL)),
    })
}

/// Read tgtadm's arguments (`argv[1..]`; `argv0` names the program in
/// getopt's messages) into what to do.
pub fn parse(args: &[String], argv0: &str) -> Result<Parsed, CliError> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let own = |name: &str| args[..end].iter().any(|a| a == name);
    let (want_json, want_counters) = (own("--json"), own("--counters"));
    let args: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| *i >= end || (a.as_str() != "--json" && a.as_str() != "--counters"))
        .map(|(_, a)| a.clone())
        .collect();
    let (opts, rest) = getopt(&args);

    let mut req = Request::default();
    let (mut op, mut mode): (Option<Op>, Option<Mode>) = (None, None);
    let mut op_name = String::new();
    let mut tid: i64 = -1;
    let (mut sid, mut cid, mut hostno, mut lun) = (0u64, 0u32, 0u32, u64::MAX);
    let mut dev_type = 0u32;
    let mut ac_dir = ACCOUNT_INCOMING;
    let mut force = false;
    let mut control_port: u16 = 0;
    let mut s: std::collections::HashMap<char, String> = Default::default();
    let (mut target_ops, mut portal_ops) = (None::<String>, None::<String>);

    for o in &opts {
        let arg = o.arg.clone().unwrap_or_default();
        match o.ch {
            'L' => req.lld = arg.chars().take(ipc::LLD_NAME_LEN - 1).collect(),
            'o' => {
                op = Some(
                    Op::from_name(&arg)
                        .ok_or_else(|| CliError::prog(&format!("unknown operation: {arg}"), 1))?,
                );
                op_name = arg;
            }
            'm' => {
                mode = Some(
                    Mode::from_name(&arg)
                        .ok_or_else(|| CliError::prog(&format!("unknown mode: {arg}"), 1))?,
                )
            }
            't' => {
                tid = str_to_int(&arg, 't', |v| i32::try_from(v).ok().filter(|&x| x >= 0))? as i64
            }
            's' => sid = str_to_int(&arg, 's', Some)?,
            'c' => cid = str_to_int(&arg, 'c', |v| u32::try_from(v).ok())?,
            'l' => lun = str_to_int(&arg, 'l', Some)?,
            'P' => {
                if mode == Some(Mode::Portal) {
                    portal_ops = Some(arg)
                } else {
                    target_ops = Some(arg)
                }
            }
            'n' | 'v' | 'b' | 'T' | 'I' | 'Q' | 'u' | 'p' | 'f' | 'y' | 'E' | 'S' => {
                s.insert(o.ch, arg);
            }
            'B' => {
                return Err(CliError::prog(&format!("can't find bus: {arg}"), EINVAL));
            }
            'H' => {
                hostno = str_to_int(&arg, 'H', |v| {
                    u32::try_from(v).ok().filter(|&x| x <= i32::MAX as u32)
                })?
            }
            'F' => force = true,
            'Y' => dev_type = device_type(&arg)?,
            'O' => ac_dir = ACCOUNT_OUTGOING,
            'C' => {
                control_port =
                    str_to_int(&arg, 'C', |v| i16::try_from(v).ok().filter(|&x| x >= 0))? as u16
            }
            'V' => return Ok(Parsed::Version),
            'd' => {}
            'h' => return Ok(Parsed::Help),
            _ => {
                // getopt names the program as invoked (argv[0]).
                let m = o.arg.as_deref().map(|m| format!("{argv0}: {m}\n"));
                return Err(CliError::usage(m.unwrap_or_default()));
            }
        }
    }
    if let Some(first) = rest.first() {
        return Err(CliError::usage(format!(
            "{PROG}: unrecognized option '{first}'\n"
        )));
    }
    let Some(op) = op else {
        return Err(fail("specify the operation type"));
    };
    let Some(mode) = mode else {
        return Err(fail("specify the mode"));
    };
    let has = |c: char| s.contains_key(&c);
    let not_allowed = |what: &str, c: char| {
        fail(&format!(
            "{what} mode: option '-{c}' is not allowed/supported"
        ))
    };

    match mode {
        Mode::System => match op {
            Op::Update => {
                if let Some(c) = verify(&opts, "LmonvC") {
                    return Err(not_allowed("system", c));
                }
                if !has('n') || !has('v') {
                    return Err(fail("update operation requires 'name' and 'value' options"));
                }
            }
            Op::Show | Op::Delete | Op::Stats => {}
            _ => {
                return Err(fail(&format!(
                    "operation {op_name} not supported in system mode"
                )))
            }
        },
        Mode::Target => {
            if tid <= 0 && op != Op::Show {
                if tid == 0 {
                    return Err(fail("'tid' cannot be 0"));
                }
                return Err(fail("'tid' option is necessary"));
            }
            match op {
                Op::New => {
                    if let Some(c) = verify(&opts, "LmotTC") {
                        return Err(not_allowed("target", c));
                    }
                    if !has('T') {
                        return Err(fail(
                            "creating new target requires a name, use --targetname",
                        ));
                    }
                }
                Op::Delete => {
                    if let Some(c) = verify(&opts, "LmotCF") {
                        return Err(not_allowed("target", c));
                    }
                }
                Op::Show | Op::Stats => {
                    if let Some(c) = verify(&opts, "LmotC") {
                        return Err(not_allowed("target", c));
                    }
                }
                Op::Bind | Op::Unbind => {
                    if let Some(c) = verify(&opts, "LmotIQBHC") {
                        return Err(not_allowed("target", c));
                    }
                    if !has('I') && !has('Q') && hostno == 0 {
                        return Err(fail(&format!(
                            "{op_name} operation requires initiator-address, initiator-nameor bus"
                        )));
                    }
                }
                Op::Update => {
                    if let Some(c) = verify(&opts, "LmotnvC") {
                        return Err(not_allowed("target", c));
                    }
                    if !has('n') || !has('v') {
                        return Err(fail("update operation requires 'name' and 'value' options"));
                    }
                }
                _ => {
                    return Err(fail(&format!(
                        "operation {op_name} not supported in target mode"
                    )))
                }
            }
        }
        Mode::Account => match op {
            Op::New => {
                if let Some(c) = verify(&opts, "LmoupfC") {
                    return Err(not_allowed("account", c));
                }
                if !has('u') || !has('p') {
                    return Err(fail("'user' and 'password' options are required"));
                }
            }
            Op::Show => {
                if let Some(c) = verify(&opts, "LmoC") {
                    return Err(not_allowed("account", c));
                }
            }
            Op::Delete => {
                if let Some(c) = verify(&opts, "LmouC") {
                    return Err(not_allowed("account", c));
                }
            }
            Op::Bind | Op::Unbind => {
                if let Some(c) = verify(&opts, "LmotuOC") {
                    return Err(not_allowed("account", c));
                }
                if !has('u') {
                    return Err(fail("'user' option is necessary"));
                }
                if tid == -1 {
                    tid = ipc::GLOBAL_TID as i64;
                }
            }
            _ => {
                return Err(fail(&format!(
                    "operation {op_name} not supported in account mode"
                )))
            }
        },
        Mode::Device => {
            if tid <= 0 {
                if tid == 0 {
                    return Err(fail("'tid' must not be 0"));
                }
                return Err(fail("'tid' option is necessary"));
            }
            if lun == u64::MAX {
                return Err(fail("'lun' option is necessary"));
            }
            match op {
                Op::New => {
                    if let Some(c) = verify(&opts, "LmofytlbEYCS") {
                        return Err(not_allowed("logicalunit", c));
                    }
                    if !has('b') && ![0x05, 0x01, 0x00].contains(&dev_type) {
                        return Err(fail("'backing-store' option is necessary"));
                    }
                }
                Op::Delete | Op::Stats => {
                    if let Some(c) = verify(&opts, "LmotlC") {
                        return Err(not_allowed("logicalunit", c));
                    }
                }
                Op::Update => {
                    if let Some(c) = verify(&opts, "LmofytlPC") {
                        return Err(fail(&format!(
                            "option '-{c}' not supported in logicalunit mode"
                        )));
                    }
                }
                _ => {
                    return Err(fail(&format!(
                        "operation {op_name} not supported in logicalunit mode"
                    )))
                }
            }
        }
        Mode::Portal => match op {
            Op::New | Op::Delete => {
                if let Some(c) = verify(&opts, "LmoCP") {
                    return Err(not_allowed("portal", c));
                }
                if portal_ops.is_none() {
                    return Err(fail("you must specify --param portal=<portal>"));
                }
            }
            Op::Show => {
                if let Some(c) = verify(&opts, "LmoC") {
                    return Err(fail(&format!("option '-{c}' not supported in portal mode")));
                }
            }
            _ => {
                return Err(fail(&format!(
                    "operation {op_name} not supported in portal mode"
                )))
            }
        },
        Mode::Lld => match op {
            Op::Start | Op::Stop | Op::Show => {
                if let Some(c) = verify(&opts, "LmoC") {
                    return Err(not_allowed("lld", c));
                }
            }
            _ => {
                return Err(fail(&format!(
                    "option {} not supported in lld mode",
                    op.raw()
                )))
            }
        },
        Mode::Session | Mode::Connection | Mode::Other(_) => {}
    }

    req.op = op;
    req.mode = mode;
    req.tid = tid as i32;
    req.sid = sid;
    req.cid = cid;
    req.lun = lun;
    req.host_no = hostno;
    req.device_type = dev_type;
    req.ac_dir = ac_dir;
    req.force = force;

    // The parameter string, in tgtadm's order; rtgt's own flags follow.
    let mut b =
        tgt_ipc::request::tgtadm_params(&s, dev_type, target_ops.as_deref(), portal_ops.as_deref());
    let mut add = |k: &str, v: &str| {
        if !b.is_empty() {
            b.push(',');
        }
        b.push_str(k);
        b.push_str(v);
    };
    // (`--help` stays tgtadm's text byte for byte; README documents these.)
    if want_json && matches!(op, Op::Show | Op::Stats) {
        add("json=", "1");
    } else if want_counters && op == Op::Stats {
        add("counters=", "1");
    }
    req.params = b;
    Ok(Parsed::Run { req, control_port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Parsed, CliError> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args, "rtgtadm")
    }

    #[test]
    fn a_line_becomes_tgtadms_request() {
        let Ok(Parsed::Run { req, control_port }) =
            p("--lld iscsi --op new --mode logicalunit --tid 2 --lun 3 -b /d -C 7 -Y cd")
        else {
            panic!()
        };
        assert_eq!(
            (req.mode, req.op, req.tid, req.lun),
            (Mode::Device, Op::New, 2, 3)
        );
        assert_eq!((req.device_type, control_port), (0x05, 7));
        assert_eq!(req.params, "path=/d");
        assert_eq!(p("-h"), Ok(Parsed::Help));
        assert_eq!(p("--version"), Ok(Parsed::Version));
        // rtgtadm's own flag, as a parameter item the stock tgtadm never sends.
        let Ok(Parsed::Run { req, .. }) = p("--op show --mode target --json") else {
            panic!()
        };
        assert_eq!(req.params, "json=1");
    }

    #[test]
    fn refusals_carry_tgtadms_messages_and_status() {
        let e = p("--op new --mode target --tid 0 -T x").unwrap_err();
        assert_eq!(
            (e.stderr.as_str(), e.code),
            ("tgtadm: 'tid' cannot be 0\n", EINVAL)
        );
        let e = p("--op new --mode nothing").unwrap_err();
        assert_eq!(
            (e.stderr.as_str(), e.code),
            ("tgtadm: unknown mode: nothing\n", 1)
        );
        let e = p("--op new --mode target --tid x").unwrap_err();
        assert_eq!(
            e.stderr,
            "-t argument value 'x' invalid\nTry `tgtadm --help' for more information.\n"
        );
        let e = p("--op delete --mode target --tid 1 -T x").unwrap_err();
        assert_eq!(
            e.stderr,
            "tgtadm: target mode: option '-T' is not allowed/supported\n"
        );
        let e = p("--bogus").unwrap_err();
        assert!(e
            .stderr
            .starts_with("rtgtadm: unrecognized option '--bogus'\n"));
    }
}
