//! Backing stores: what a LUN's blocks live on. Each implements
//! [`scsi::BlockDevice`]; the SCSI emulation stays in the `scsi` crate, as in
//! LIO, and these only move bytes.
//!
//! Calls block, so the daemon makes them from worker threads, never from a
//! target's event loop.

mod file;
mod null;

pub use file::FileDevice;
pub use null::NullDevice;

use std::sync::Arc;

use scsi::BlockDevice;

/// Backing store types, by tgt's names (`-E` / `--bstype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// pread/pwrite on a file or block device (tgt's default).
    Rdwr,
    /// tgt's asynchronous store; served by the same worker-pool engine here.
    Aio,
    /// Zeros on read, writes discarded.
    Null,
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
            other => Err(BackendError::UnknownType(other.to_string())),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Rdwr => "rdwr",
            BackendKind::Aio => "aio",
            BackendKind::Null => "null",
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

/// Open a backing store. `null_size` is the size a null store reports.
pub fn open(
    kind: BackendKind,
    path: Option<&str>,
    flags: OpenFlags,
    null_size: u64,
) -> Result<Arc<dyn BlockDevice>, BackendError> {
    match kind {
        BackendKind::Null => Ok(Arc::new(NullDevice::new(null_size))),
        BackendKind::Rdwr | BackendKind::Aio => {
            let path = path.filter(|p| !p.is_empty()).ok_or(BackendError::NoPath)?;
            let dev =
                FileDevice::open(path.as_ref(), flags).map_err(|source| BackendError::Open {
                    path: path.to_string(),
                    source,
                })?;
            Ok(Arc::new(dev))
        }
    }
}
