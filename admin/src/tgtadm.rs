//! The tgtadm command lines tgt-admin builds, turned into management
//! requests without running tgtadm: the line is split into words as
//! `/bin/sh` would (tgt-admin hands it to `system`), then read by
//! [`crate::cli`], rtgtadm's parser, into the request tgtadm sends.

use std::io::Write;
use std::os::unix::net::UnixStream;

use tgt_ipc::ipc::{self, strerror, Response};
use tgt_ipc::request::{Mode, Op, Request};
use tgt_ipc::socket;

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
    // The same parser as rtgtadm: tgt-admin ran tgtadm, whose checks and
    // messages these are.
    let (req, control_port) = match crate::cli::parse(&args, "tgtadm") {
        Ok(crate::cli::Parsed::Run { req, control_port }) => (req, control_port),
        Ok(crate::cli::Parsed::Help) => {
            let _ = out.write_all(crate::cli::HELP.as_bytes());
            return 0;
        }
        Ok(crate::cli::Parsed::Version) => {
            let _ = writeln!(out, "{}", crate::cli::VERSION);
            return 0;
        }
        Err(e) => {
            eprint!("{}", e.stderr);
            return e.code;
        }
    };
    match send(&req, control_port) {
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
