//! The tgtadm command lines tgt-admin builds, turned into management
//! requests without running tgtadm: the line is split into words as
//! `/bin/sh` would (tgt-admin hands it to `system`), then read with
//! tgtadm's options into the same [`Request`] `rtgtadm` sends for it.

use std::io::Write;
use std::os::unix::net::UnixStream;

use crate::mgmt::ipc::{self, strerror, Response};
use crate::mgmt::request::{c_strtoull, Mode, Op, Request, ACCOUNT_OUTGOING};
use crate::mgmt::socket;

/// Split a command line into words like `sh` does for the lines tgt-admin
/// writes: blanks separate words; `'...'`, `"..."` (with `\"`, `\\`, `\$`,
/// `` \` `` escapes) and `\x` quote. No expansion is done.
pub fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                for c in it.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = it.next() {
                    match c {
                        '"' => break,
                        '\\' => match it.peek() {
                            Some(&n) if matches!(n, '"' | '\\' | '$' | '`') => {
                                cur.push(n);
                                it.next();
                            }
                            _ => cur.push('\\'),
                        },
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = it.next() {
                    cur.push(n);
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// tgtadm's long options: name, takes an argument, short letter.
const LONG: &[(&str, bool, char)] = &[
    ("debug", false, 'd'),
    ("help", false, 'h'),
    ("version", false, 'V'),
    ("lld", true, 'L'),
    ("op", true, 'o'),
    ("mode", true, 'm'),
    ("tid", true, 't'),
    ("sid", true, 's'),
    ("cid", true, 'c'),
    ("lun", true, 'l'),
    ("name", true, 'n'),
    ("value", true, 'v'),
    ("backing-store", true, 'b'),
    ("bstype", true, 'E'),
    ("bsopts", true, 'S'),
    ("bsoflags", true, 'f'),
    ("blocksize", true, 'y'),
    ("targetname", true, 'T'),
    ("initiator-address", true, 'I'),
    ("initiator-name", true, 'Q'),
    ("user", true, 'u'),
    ("password", true, 'p'),
    ("host", true, 'H'),
    ("force", false, 'F'),
    ("params", true, 'P'),
    ("bus", true, 'B'),
    ("device-type", true, 'Y'),
    ("outgoing", false, 'O'),
    ("control-port", true, 'C'),
];

/// tgtadm's short options (`-F` and `-O` take an argument there).
const SHORT_WITH_ARG: &str = "LomtsclnvbEfyTIQupHFPBYOCS";

/// A tgtadm command line read into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The request.
    pub req: Request,
    /// `-C`.
    pub control_port: u16,
}

fn num(s: &str, ch: char) -> Result<u64, String> {
    let (v, used) = c_strtoull(s, 0);
    if used == 0 || v == u64::MAX {
        return Err(format!("-{ch} argument value '{s}' invalid"));
    }
    Ok(v)
}

/// Read tgtadm's arguments (`argv[1..]`) into a request, building the
/// parameter string in tgtadm's order, as `rtgtadm` does.
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut opts: Vec<(char, Option<String>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let cands: Vec<_> = LONG
                .iter()
                .filter(|l| l.0 == name || l.0.starts_with(name))
                .collect();
            let l = LONG
                .iter()
                .find(|l| l.0 == name)
                .or(if cands.len() == 1 {
                    Some(cands[0])
                } else {
                    None
                })
                .ok_or_else(|| format!("unrecognized option '--{name}'"))?;
            let v = if l.1 {
                match inline {
                    Some(v) => Some(v),
                    None if i < args.len() => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    None => return Err(format!("option '--{}' requires an argument", l.0)),
                }
            } else {
                None
            };
            opts.push((l.2, v));
        } else if a.len() > 1 && a.starts_with('-') {
            let c = a[1..].chars().next().unwrap_or('-');
            if SHORT_WITH_ARG.contains(c) {
                let rest = &a[1 + c.len_utf8()..];
                let v = if !rest.is_empty() {
                    rest.to_string()
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return Err(format!("option requires an argument -- '{c}'"));
                };
                opts.push((c, Some(v)));
            } else if "dhV".contains(c) {
                opts.push((c, None));
            } else {
                return Err(format!("invalid option -- '{c}'"));
            }
        } else {
            return Err(format!("unrecognized option '{a}'"));
        }
    }

    let mut req = Request::default();
    let (mut op, mut mode) = (None, None);
    let mut control_port = 0u16;
    let mut s: std::collections::HashMap<char, String> = Default::default();
    let (mut target_ops, mut portal_ops) = (None::<String>, None::<String>);
    for (c, v) in &opts {
        let arg = v.clone().unwrap_or_default();
        match c {
            'L' => req.lld = arg.chars().take(ipc::LLD_NAME_LEN - 1).collect(),
            'o' => op = Some(Op::from_name(&arg).ok_or(format!("unknown operation: {arg}"))?),
            'm' => mode = Some(Mode::from_name(&arg).ok_or(format!("unknown mode: {arg}"))?),
            't' => {
                req.tid = i32::try_from(num(&arg, 't')?)
                    .map_err(|_| format!("-t argument value '{arg}' out of range"))?
            }
            's' => req.sid = num(&arg, 's')?,
            'c' => {
                req.cid = u32::try_from(num(&arg, 'c')?)
                    .map_err(|_| format!("-c argument value '{arg}' out of range"))?
            }
            'l' => req.lun = num(&arg, 'l')?,
            'C' => {
                control_port = i16::try_from(num(&arg, 'C')?)
                    .ok()
                    .filter(|&x| x >= 0)
                    .ok_or(format!("-C argument value '{arg}' out of range"))?
                    as u16
            }
            'P' => {
                if mode == Some(Mode::Portal) {
                    portal_ops = Some(arg)
                } else {
                    target_ops = Some(arg)
                }
            }
            'F' => req.force = true,
            'O' => req.ac_dir = ACCOUNT_OUTGOING,
            'Y' => {
                req.device_type = match arg.as_str() {
                    "disk" => 0x00,
                    "tape" | "ssc" => 0x01,
                    "cd" => 0x05,
                    "changer" => 0x08,
                    "osd" => 0x11,
                    "pt" => 0xff,
                    _ => return Err(format!("unknown target type: {arg}")),
                }
            }
            'H' => req.host_no = num(&arg, 'H')? as u32,
            'B' => return Err(format!("can't find bus: {arg}")),
            'd' | 'h' | 'V' => {}
            c => {
                s.insert(*c, arg);
            }
        }
    }
    req.op = op.ok_or("specify the operation type")?;
    req.mode = mode.ok_or("specify the mode")?;
    let b = crate::mgmt::request::tgtadm_params(
        &s,
        req.device_type,
        target_ops.as_deref(),
        portal_ops.as_deref(),
    );
    req.params = b;
    Ok(Command { req, control_port })
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The daemon's socket could not be reached (tgtadm's ENOTCONN case).
    #[error("failed to send request hdr to tgt daemon, Transport endpoint is not connected")]
    NotConnected,
    /// Writing or reading the socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The response was malformed.
    #[error("can't get the response, {0}")]
    Ipc(String),
}

/// Send one request to the daemon on `control_port` (socket prefix from
/// `$TGT_IPC_SOCKET` or tgt's default) and read its response; for a
/// successful `system delete`, wait until the daemon has gone, as tgtadm
/// does.
pub fn send(req: &Request, control_port: u16) -> Result<Response, SendError> {
    let path = socket::socket_path(&socket::default_prefix(), control_port);
    let mut stream = UnixStream::connect(&path).map_err(|_| SendError::NotConnected)?;
    stream.write_all(&ipc::encode_request(req))?;
    let rsp = match ipc::read_response_blocking(&mut stream) {
        Ok(r) => r,
        Err(ipc::IpcError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Ok(Response {
                err: 0,
                text: String::new(),
            })
        }
        Err(ipc::IpcError::Io(e)) => return Err(SendError::Io(e)),
        Err(e) => return Err(SendError::Ipc(e.to_string())),
    };
    if rsp.err == 0 && req.mode == Mode::System && req.op == Op::Delete {
        for _ in 0..600 {
            match UnixStream::connect(&path) {
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
    Ok(rsp)
}

/// Run a tgtadm command line as tgtadm would: the response text goes to
/// `out`, an error message to stderr; returns tgtadm's exit status.
pub fn run_line(line: &str, out: &mut dyn Write) -> i32 {
    let words = shell_words(line);
    let args = match words.split_first() {
        Some((_, rest)) => rest.to_vec(),
        None => return 0,
    };
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("tgtadm: {m}");
            return libc::EINVAL;
        }
    };
    match send(&cmd.req, cmd.control_port) {
        Ok(r) if r.err != 0 => {
            eprintln!("tgtadm: {}", strerror(r.err));
            libc::EINVAL
        }
        Ok(r) => {
            let _ = out.write_all(r.text.as_bytes());
            let _ = out.flush();
            0
        }
        Err(SendError::NotConnected) => {
            eprintln!("tgtadm: {}", SendError::NotConnected);
            libc::ENOTCONN
        }
        Err(e) => {
            eprintln!("tgtadm: {e}");
            libc::EINVAL
        }
    }
}

/// Run a query line (tgt-admin's backticks): the response text, or empty.
pub fn query_line(line: &str) -> String {
    let mut v = Vec::new();
    run_line(line, &mut v);
    String::from_utf8_lossy(&v).into_owned()
}
