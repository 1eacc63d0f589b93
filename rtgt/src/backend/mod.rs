//! Backing stores: what a LUN's blocks live on. Each implements
//! [`scsi::BlockDevice`]; the SCSI emulation stays in the `scsi` crate, as in
//! LIO, and these only move bytes.
//!
//! Calls block, so the daemon makes them from worker threads or io_uring,
//! never from a target's event loop (stores in memory excepted).
//!
//! Engines by tgt's names: `-E aio` sends plain reads, writes and flushes
//! through the loop's io_uring; `-E rdwr` (the default) runs everything on
//! the bounded worker pool, unless rtgtd runs with `--rdwr-engine uring`.

pub mod engine;
mod fault;
mod file;
mod null;
pub mod rbd;
pub mod uring;

pub use file::FileDevice;
pub use null::NullDevice;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use scsi::BlockDevice;

/// `--rdwr-engine uring`: serve `-E rdwr` through io_uring like `aio`.
static RDWR_USES_URING: AtomicBool = AtomicBool::new(false);

/// Choose the engine behind `-E rdwr` for stores opened from now on.
pub fn set_rdwr_uses_uring(on: bool) {
    RDWR_USES_URING.store(on, Ordering::Relaxed);
}

/// Backing store types, by tgt's names (`-E` / `--bstype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// pread/pwrite on a file or block device (tgt's default), on the
    /// bounded worker pool; `--rdwr-engine uring` sends it to io_uring.
    Rdwr,
    /// Asynchronous I/O: plain reads, writes and flushes through the
    /// target loop's io_uring (the rest on the worker pool).
    Aio,
    /// Zeros on read, writes discarded.
    Null,
    /// A Ceph RBD image through librbd's asynchronous calls
    /// ([`rbd::RbdDevice`]).
    Rbd,
}

/// Errors opening a backing store.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The `-E` name is not one we serve.
    #[error("unknown backing store type '{0}'")]
    UnknownType(String),
    /// A file or device backend was given no path.
    #[error("backing store path is required")]
    NoPath,
    /// The `--bsopts` or image path of an RBD store do not parse.
    #[error("{0}")]
    BadOptions(String),
    /// Opening or sizing the file failed.
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl BackendKind {
    pub fn parse(name: &str) -> Result<BackendKind, BackendError> {
        match name {
            "" | "rdwr" => Ok(BackendKind::Rdwr),
            "aio" => Ok(BackendKind::Aio),
            "null" => Ok(BackendKind::Null),
            "rbd" => Ok(BackendKind::Rbd),
            other => Err(BackendError::UnknownType(other.to_string())),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Rdwr => "rdwr",
            BackendKind::Aio => "aio",
            BackendKind::Null => "null",
            BackendKind::Rbd => "rbd",
        }
    }
}

/// Options from `--bsoflags` (tgt: `sync`, `direct`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub sync: bool,
    pub direct: bool,
    pub readonly: bool,
}

impl OpenFlags {
    /// Parse tgt's `bsoflags` list (`sync:direct`, comma or colon separated).
    pub fn parse(s: &str) -> Result<OpenFlags, BackendError> {
        let mut f = OpenFlags::default();
        for w in s.split([':', ',']).map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "sync" => f.sync = true,
                "direct" => f.direct = true,
                other => return Err(BackendError::UnknownType(format!("bsoflags {other}"))),
            }
        }
        Ok(f)
    }
}

/// Open a backing store (blocking: RBD connects to its cluster). `null_size`
/// is the size a null store reports; `bsopts` are the store's own options.
pub fn open(
    kind: BackendKind,
    path: Option<&str>,
    bsopts: Option<&str>,
    flags: OpenFlags,
    null_size: u64,
) -> Result<Arc<dyn BlockDevice>, BackendError> {
    match kind {
        BackendKind::Null => Ok(Arc::new(NullDevice::new(null_size))),
        BackendKind::Rbd => {
            let path = path.filter(|p| !p.is_empty()).ok_or(BackendError::NoPath)?;
            let spec = rbd::RbdSpec::parse(path, bsopts).map_err(BackendError::BadOptions)?;
            let dev = rbd::RbdDevice::open(spec, flags.readonly).map_err(|source| {
                BackendError::Open {
                    path: path.to_string(),
                    source,
                }
            })?;
            Ok(Arc::new(dev))
        }
        BackendKind::Rdwr | BackendKind::Aio => {
            let path = path.filter(|p| !p.is_empty()).ok_or(BackendError::NoPath)?;
            let mut dev =
                FileDevice::open(path.as_ref(), flags).map_err(|source| BackendError::Open {
                    path: path.to_string(),
                    source,
                })?;
            if kind == BackendKind::Rdwr && !RDWR_USES_URING.load(Ordering::Relaxed) {
                dev = dev.without_uring();
            }
            Ok(fault::inject(path, Arc::new(dev)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-E aio` offers its descriptor to the loop's io_uring; `-E rdwr`
    /// keeps to the worker pool unless `--rdwr-engine uring`.
    #[test]
    fn engine_follows_the_store_type() {
        let dir = std::env::temp_dir().join(format!("rtgt-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("disk.img");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let path = p.to_str();
        let aio = open(BackendKind::Aio, path, None, OpenFlags::default(), 0).unwrap();
        assert!(aio.raw_fd().is_some());
        let rdwr = open(BackendKind::Rdwr, path, None, OpenFlags::default(), 0).unwrap();
        assert!(rdwr.raw_fd().is_none());
        set_rdwr_uses_uring(true);
        let rdwr = open(BackendKind::Rdwr, path, None, OpenFlags::default(), 0).unwrap();
        set_rdwr_uses_uring(false);
        assert!(rdwr.raw_fd().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
