//! The management socket at tgt's path, `<prefix>.<control-port>` (default
//! prefix `/var/run/tgtd/socket`, or `$TGT_IPC_SOCKET` as the stock tgtadm
//! and tgtd honour it), and its lock file `<prefix>.<port>.lock`.
//!
//! Like tgtd (`lockf(F_TLOCK)`, an fcntl write lock on the first byte), we
//! lock the first byte of the lock file. We use an open-file-description
//! lock (`F_OFD_SETLK`): it conflicts with tgtd's classic record lock, so an
//! rtgtd and a tgtd on the same control port exclude each other, and unlike
//! a classic lock it also conflicts within one process. The socket file is never
//! unlinked on exit: after `--mode system --op delete` the stock tgtadm
//! polls the path until `connect` fails with ECONNREFUSED, and a missing
//! file (ENOENT) would make it poll forever.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// tgt's `TGT_IPC_DIR`.
pub const DEFAULT_DIR: &str = "/var/run/tgtd";

/// The socket path prefix: `$TGT_IPC_SOCKET` if set, else
/// `/var/run/tgtd/socket`.
pub fn default_prefix() -> PathBuf {
    match std::env::var_os("TGT_IPC_SOCKET") {
        Some(p) => PathBuf::from(p),
        None => Path::new(DEFAULT_DIR).join("socket"),
    }
}

/// `<prefix>.<port>`.
pub fn socket_path(prefix: &Path, control_port: u16) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(format!(".{control_port}"));
    PathBuf::from(s)
}

/// Holds the lock file's lock for as long as it lives.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    path: PathBuf,
    socket: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }

    /// The socket file.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

/// Bind `<dir>/socket.<port>` (see [`bind_prefix`]).
pub fn bind(control_port: u16, dir: &Path) -> io::Result<(UnixListener, LockGuard)> {
    bind_prefix(&dir.join("socket"), control_port)
}

/// Take the lock `<prefix>.<port>.lock`, then (re)create and listen on
/// `<prefix>.<port>` with mode 0600. Fails with `AddrInUse` and a clear
/// message when another daemon holds the lock. The returned listener is
/// non-blocking, ready for `tokio::net::UnixListener::from_std`.
pub fn bind_prefix(prefix: &Path, control_port: u16) -> io::Result<(UnixListener, LockGuard)> {
    if let Some(dir) = prefix.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        }
    }
    let sock = socket_path(prefix, control_port);
    let mut lock_os = sock.as_os_str().to_owned();
    lock_os.push(".lock");
    let lock_path = PathBuf::from(lock_os);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&lock_path)?;
    // Like lockf(fd, F_TLOCK, 1): a non-blocking write lock on byte 0.
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: fcntl on a valid open fd with a properly initialised flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EAGAIN) => io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another tgtd (or rtgtd) is using {}", lock_path.display()),
            ),
            _ => io::Error::new(
                e.kind(),
                format!(
                    "unable to get lock of management IPC {}: {e}",
                    lock_path.display()
                ),
            ),
        });
    }
    let max =
        std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>() - 1;
    if sock.as_os_str().len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("management path too long: {}", sock.display()),
        ));
    }
    match fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&sock)?;
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok((
        listener,
        LockGuard {
            _file: file,
            path: lock_path,
            socket: sock,
        },
    ))
}
