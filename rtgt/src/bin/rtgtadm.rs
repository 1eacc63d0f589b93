//! rtgtadm: tgtadm's command line, option for option (tgt 1.0.85
//! `usr/tgtadm.c`): the same options, checks and messages (the parser is
//! `tgt_admin::cli`, shared with rtgt-admin), the same request bytes on the
//! management socket, the same output and exit codes.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::exit;

use tgt_admin::cli::{self, Parsed, PROG};
use tgt_ipc::ipc::{self, strerror};
use tgt_ipc::request::{Mode, Op, Request};
use tgt_ipc::socket;

const EINVAL: i32 = libc::EINVAL;

macro_rules! eprint_prog {
    ($($arg:tt)*) => {{
        eprint!("{}: ", PROG);
        eprint!($($arg)*);
    }};
}

fn main() {
    let argv0 = std::env::args().next().unwrap_or_else(|| PROG.to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args, &argv0) {
        Ok(Parsed::Run { req, control_port }) => exit(send(&req, control_port)),
        Ok(Parsed::Help) => {
            print!("{}", cli::HELP);
            let _ = std::io::stdout().flush();
            exit(0)
        }
        Ok(Parsed::Version) => {
            println!("{}", cli::VERSION);
            exit(0)
        }
        Err(e) => {
            eprint!("{}", e.stderr);
            exit(e.code)
        }
    }
}

/// Send the request and print the answer; returns the exit code.
fn send(req: &Request, control_port: u16) -> i32 {
    let path = socket::socket_path(&socket::default_prefix(), control_port);
    let mut stream = match UnixStream::connect(Path::new(&path)) {
        Ok(s) => s,
        Err(_) => {
            // tgtadm goes on to write to the unconnected socket and reports
            // that failure.
            eprint_prog!(
                "failed to send request hdr to tgt daemon, Transport endpoint is not connected\n"
            );
            return libc::ENOTCONN;
        }
    };
    let bytes = ipc::encode_request(req);
    if let Err(e) = stream.write_all(&bytes) {
        eprint_prog!("failed to send request hdr to tgt daemon, {}\n", e);
        return e.raw_os_error().unwrap_or(EINVAL);
    }
    let rsp = match ipc::read_response_blocking(&mut stream) {
        Ok(r) => r,
        Err(ipc::IpcError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            eprint_prog!("tgtd closed the socket\n");
            return 0;
        }
        Err(e) => {
            eprint_prog!("can't get the response, {}\n", e);
            return EINVAL;
        }
    };
    if rsp.err != 0 {
        eprint_prog!("{}\n", strerror(rsp.err));
        return EINVAL;
    }
    if req.mode == Mode::System && req.op == Op::Delete {
        // Wait until the daemon has gone (connect refused), as tgtadm does.
        loop {
            match UnixStream::connect(&path) {
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
    if !rsp.text.is_empty() {
        print!("{}", rsp.text);
        let _ = std::io::stdout().flush();
    }
    0
}
