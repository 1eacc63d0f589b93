//! Fault injection for tests (issue 13's kind), off unless its variable is
//! set: with `RTGT_FAULT_STALL_GATE=<path>`, a file store whose path ends
//! in `.stall` runs on the worker pool and blocks every operation while
//! `<path>` exists (up to two minutes), standing in for a store that stops
//! answering (a hung NFS server, a dying disk). Removing the file lets the
//! stuck operations finish. With `RTGT_FAULT_EIO` set, a file store whose
//! path ends in `.eio` fails every read, write and flush with EIO, as a
//! disk with bad sectors does.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scsi::BlockDevice;

/// The longest a stalled operation waits before going on anyway.
const LONGEST: Duration = Duration::from_secs(120);

/// `dev`, failing or stalling as described above when a variable is set
/// and `path` asks for it; else `dev` itself.
pub fn inject(path: &str, dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
    if path.ends_with(".eio") && std::env::var_os("RTGT_FAULT_EIO").is_some() {
        return Arc::new(Failing { inner: dev });
    }
    match std::env::var_os("RTGT_FAULT_STALL_GATE") {
        Some(gate) if path.ends_with(".stall") => Arc::new(Stalling {
            inner: dev,
            gate: PathBuf::from(gate),
        }),
        _ => dev,
    }
}

/// Every transfer fails with EIO.
struct Failing {
    inner: Arc<dyn BlockDevice>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl BlockDevice for Failing {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        Err(eio())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(eio())
    }
    fn flush(&self) -> io::Result<()> {
        Err(eio())
    }
}

struct Stalling {
    inner: Arc<dyn BlockDevice>,
    gate: PathBuf,
}

impl Stalling {
    fn wait(&self) {
        let t0 = Instant::now();
        while self.gate.exists() && t0.elapsed() < LONGEST {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl BlockDevice for Stalling {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.wait();
        self.inner.read_at(buf, offset)
    }
    fn read_into(&self, buf: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
        self.wait();
        self.inner.read_into(buf, offset, len)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.wait();
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.wait();
        self.inner.flush()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.wait();
        self.inner.punch_hole(offset, len)
    }
    fn map_status(&self, offset: u64) -> io::Result<(bool, u64)> {
        self.inner.map_status(offset)
    }
}
