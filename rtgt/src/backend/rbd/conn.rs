//! One cluster connection with its image open: opening (with the
//! options a SCSI disk needs), the image's identity and effective
//! settings, and closing on a thread of its own.

use std::ffi::{c_char, c_int, CString};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use scsi::MediaResult;

use super::ffi::{self, Api};
use super::spec::RbdSpec;
use super::{ESHUTDOWN, OP_TIMEOUT_S};

pub(super) fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

pub(super) fn os_err(r: i64) -> io::Error {
    io::Error::from_raw_os_error(i32::try_from(-r).unwrap_or(libc::EIO))
}

/// One cluster connection with its image open.
pub(super) struct Conn {
    pub(super) api: &'static Api,
    pub(super) rados: ffi::Rados,
    pub(super) ioctx: ffi::IoCtx,
    pub(super) image: ffi::Image,
    /// The cluster fenced this client: reopen before more I/O.
    pub(super) fenced: AtomicBool,
    /// Opened read-only (a snapshot, or asked).
    pub(super) readonly: bool,
    /// `<cluster fsid>/<pool id>/<image id>[@snap]`: the same on every
    /// gateway (see [`BlockDevice::identity`]).
    pub(super) identity: String,
    /// librbd's client cache is on for this image (from any source:
    /// bsopts, ceph.conf, pool or image settings).
    pub(super) cache: bool,
}

// SAFETY: librados and librbd handles may be used from any thread; librbd
// serializes internally.
unsafe impl Send for Conn {}
// SAFETY: as above.
unsafe impl Sync for Conn {}

/// Handles to close, moved to a closing thread.
struct Handles(&'static Api, ffi::Rados, ffi::IoCtx, ffi::Image);
// SAFETY: as for `Conn`.
unsafe impl Send for Handles {}

/// Cluster handles not yet closed, for [`wait_closed`].
static OPEN: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

fn count_open(delta: isize) {
    let mut n = OPEN.0.lock().unwrap_or_else(|p| p.into_inner());
    *n = n.saturating_add_signed(delta);
    OPEN.1.notify_all();
}

/// Wait (up to `limit`) until every image dropped so far is closed: on
/// shutdown, so each releases its exclusive lock and watch at once, and a
/// restarted rtgtd (or another gateway) can write without waiting ~30 s
/// for the cluster to time the dead client out.
pub fn wait_closed(limit: Duration) {
    let n = OPEN.0.lock().unwrap_or_else(|p| p.into_inner());
    let _ = OPEN.1.wait_timeout_while(n, limit, |n| *n > 0);
}

impl Handles {
    fn close(self) {
        let Handles(api, rados, ioctx, image) = self;
        // SAFETY: each handle is live and closed exactly once, in the
        // reverse order of opening.
        unsafe {
            if !image.is_null() {
                (api.rbd_close)(image);
            }
            if !ioctx.is_null() {
                (api.rados_ioctx_destroy)(ioctx);
            }
            (api.rados_shutdown)(rados);
        }
        count_open(-1);
    }
}

/// The one thread that closes images: closing waits for the cluster
/// (flushes, releases the lock), so never on a target loop, the main
/// thread, or librbd's own callback thread (where the last reference can
/// drop, and closing would wait on itself).
fn closer() -> Option<&'static std::sync::Mutex<std::sync::mpsc::Sender<Handles>>> {
    static CLOSER: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<Handles>>>> =
        std::sync::OnceLock::new();
    CLOSER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Handles>();
            std::thread::Builder::new()
                .name("rbd-close".into())
                .spawn(move || {
                    for h in rx {
                        h.close();
                    }
                })
                .ok()
                .map(|_| std::sync::Mutex::new(tx))
        })
        .as_ref()
}

impl Drop for Conn {
    fn drop(&mut self) {
        let h = Handles(self.api, self.rados, self.ioctx, self.image);
        let sent = closer().map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).send(h));
        if !matches!(sent, Some(Ok(()))) {
            // No closer: leave the handles open (the process is short of
            // threads) rather than risk closing on a librbd thread.
            tracing::error!("cannot close an rbd image: no closing thread");
        }
    }
}

impl Conn {
    pub(super) fn open(spec: &RbdSpec, readonly: bool) -> io::Result<Conn> {
        let mut conn = Conn::connect(spec, readonly)?;
        let api = conn.api;
        let image = cstr(&spec.image)?;
        let snap = spec.snap.as_deref().map(cstr).transpose()?;
        let snap_ptr = snap.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let open = if readonly {
            api.rbd_open_read_only
        } else {
            api.rbd_open
        };
        // SAFETY: a live ioctx, C strings (or NULL) and an out pointer.
        let r = unsafe { open(conn.ioctx, image.as_ptr(), &mut conn.image, snap_ptr) };
        if r < 0 {
            conn.image = std::ptr::null_mut();
            return Err(os_err(r.into()));
        }
        conn.identity = conn.identity_of(spec)?;
        // The cache as librbd will run it: a pool or image setting
        // (`rbd config image set ... rbd_cache true`) beats ours.
        conn.cache = conn
            .effective_option("rbd_cache")
            .is_none_or(|v| v != "false");
        Ok(conn)
    }

    /// A cluster connection with the image's pool open, no image (the
    /// client that keeps the SCSI state shared with other gateways).
    pub(super) fn connect(spec: &RbdSpec, readonly: bool) -> io::Result<Conn> {
        let api = ffi::api().map_err(io::Error::other)?;
        let cluster = cstr(spec.cluster.as_deref().unwrap_or("ceph"))?;
        let name = cstr(&format!("client.{}", spec.id.as_deref().unwrap_or("admin")))?;
        let mut rados: ffi::Rados = std::ptr::null_mut();
        // SAFETY: valid C strings and an out pointer.
        let r = unsafe { (api.rados_create2)(&mut rados, cluster.as_ptr(), name.as_ptr(), 0) };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        // From here `conn`'s Drop releases whatever is open.
        count_open(1);
        let mut conn = Conn {
            api,
            rados,
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
            fenced: AtomicBool::new(false),
            readonly,
            cache: false,
            identity: String::new(),
        };
        let conf = spec.conf.as_deref().map(cstr).transpose()?;
        // SAFETY: a live handle; NULL asks for librados' default search.
        let r = unsafe {
            (api.rados_conf_read_file)(
                rados,
                conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        if r < 0 && conf.is_some() {
            return Err(os_err(r.into()));
        }
        let timeout = OP_TIMEOUT_S.to_string();
        let defaults = [
            ("rbd_cache", "false"),
            ("rbd_skip_partial_discard", "false"),
            ("rados_osd_op_timeout", timeout.as_str()),
            ("rados_mon_op_timeout", timeout.as_str()),
            ("client_mount_timeout", timeout.as_str()),
        ];
        let extra = spec.options.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in defaults.into_iter().chain(extra) {
            if k == "rbd_non_blocking_aio" {
                // Blocking submission would stall the target loop.
                tracing::warn!(
                    option = k,
                    "ceph option not set: rtgt needs non-blocking aio"
                );
                continue;
            }
            let (kc, vc) = (cstr(k)?, cstr(v)?);
            // SAFETY: a live handle and C strings.
            let r = unsafe { (api.rados_conf_set)(rados, kc.as_ptr(), vc.as_ptr()) };
            if r < 0 {
                // tgt's bs_rbd ignores options it does not know; so do
                // we, but say so.
                tracing::warn!(option = k, value = v, error = %os_err(r.into()), "ceph option not set");
            }
        }
        // SAFETY: a configured handle.
        let r = unsafe { (api.rados_connect)(rados) };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        let pool = cstr(&spec.pool)?;
        // SAFETY: a connected handle, a C string and an out pointer.
        let r = unsafe { (api.rados_ioctx_create)(rados, pool.as_ptr(), &mut conn.ioctx) };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        Ok(conn)
    }

    /// The image's cluster-wide name (`rados_cluster_fsid`,
    /// `rados_ioctx_get_id`, `rbd_get_id`).
    fn identity_of(&self, spec: &RbdSpec) -> io::Result<String> {
        let api = self.api;
        let text = |f: &mut dyn FnMut(*mut c_char, usize) -> c_int| -> io::Result<String> {
            let mut buf = vec![0u8; 128];
            let r = f(buf.as_mut_ptr().cast(), buf.len());
            if r < 0 {
                return Err(os_err(r.into()));
            }
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
        };
        // SAFETY (each call): live handles and a buffer of the length given.
        let fsid = text(&mut |p, n| unsafe { (api.rados_cluster_fsid)(self.rados, p, n) })?;
        let image = text(&mut |p, n| unsafe { (api.rbd_get_id)(self.image, p, n) })?;
        // SAFETY: a live ioctx.
        let pool = unsafe { (api.rados_ioctx_get_id)(self.ioctx) };
        let mut id = format!("{fsid}/{pool}/{image}");
        if let Some(snap) = &spec.snap {
            id.push('@');
            id.push_str(snap);
        }
        Ok(id)
    }

    /// An option's value as the open image applies it
    /// (`rbd_config_image_list`); `None` if librbd cannot say.
    fn effective_option(&self, name: &str) -> Option<String> {
        let api = self.api;
        let mut max: c_int = 0;
        // SAFETY: asks for the count only (NULL array, 0 capacity).
        unsafe { (api.rbd_config_image_list)(self.image, std::ptr::null_mut(), &mut max) };
        let n = usize::try_from(max)
            .ok()
            .filter(|&n| n > 0 && n < 100_000)?;
        let mut opts: Vec<ffi::ConfigOption> = Vec::with_capacity(n);
        // SAFETY: room for `max` entries, which librbd fills (and later
        // frees with the cleanup call).
        let r = unsafe { (api.rbd_config_image_list)(self.image, opts.as_mut_ptr(), &mut max) };
        if r < 0 || max < 0 || max as usize > n {
            return None;
        }
        // SAFETY: librbd initialised the first `max` entries.
        unsafe { opts.set_len(max as usize) };
        let found = opts.iter().find_map(|o| {
            // SAFETY: NUL-terminated strings owned by the list.
            let k = unsafe { std::ffi::CStr::from_ptr(o.name) };
            (k.to_bytes() == name.as_bytes()).then(|| {
                unsafe { std::ffi::CStr::from_ptr(o.value) }
                    .to_string_lossy()
                    .into_owned()
            })
        });
        // SAFETY: the list librbd filled, released once.
        unsafe { (api.rbd_config_image_list_cleanup)(opts.as_mut_ptr(), max) };
        found
    }

    /// Read `buf.len()` bytes at `offset` (blocking).
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // SAFETY: an open image and a buffer of `buf.len()` bytes.
        let r =
            unsafe { (self.api.rbd_read)(self.image, offset, buf.len(), buf.as_mut_ptr().cast()) };
        self.check(r as i64)?;
        if r as usize != buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Write `buf` at `offset` (blocking).
    pub(super) fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // SAFETY: an open image and a buffer of `buf.len()` bytes.
        let r = unsafe { (self.api.rbd_write)(self.image, offset, buf.len(), buf.as_ptr().cast()) };
        self.check(r as i64)?;
        if r as usize != buf.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }

    /// Flush the image (blocking).
    pub(super) fn flush(&self) -> io::Result<()> {
        // SAFETY: an open image.
        self.check(unsafe { (self.api.rbd_flush)(self.image) }.into())
    }

    /// This client's address as the cluster knows it (what
    /// [`lock_owners`](Conn::lock_owners) lists for it).
    pub(super) fn address(&self) -> io::Result<String> {
        let api = self.api;
        let mut s: *mut c_char = std::ptr::null_mut();
        // SAFETY: a connected handle and an out pointer; librados
        // allocates the string, freed below.
        let r = unsafe { (api.rados_getaddrs)(self.rados, &mut s) };
        if r < 0 || s.is_null() {
            return Err(os_err(r.min(-1).into()));
        }
        // SAFETY: a NUL-terminated string from librados, freed once.
        let text = unsafe { std::ffi::CStr::from_ptr(s) }
            .to_string_lossy()
            .into_owned();
        unsafe { (api.rados_buffer_free)(s) };
        Ok(text)
    }

    /// The clients holding the image's exclusive lock (their addresses;
    /// none when nobody holds it). Asks the cluster: blocking.
    pub(super) fn lock_owners(&self) -> io::Result<Vec<String>> {
        let api = self.api;
        let mut max = 4usize;
        loop {
            let mut mode: c_int = 0;
            let mut owners: Vec<*mut c_char> = vec![std::ptr::null_mut(); max];
            let mut n = max;
            // SAFETY: an open image and an array of `n` pointers, which
            // librbd fills and the cleanup call frees.
            let r = unsafe {
                (api.rbd_lock_get_owners)(self.image, &mut mode, owners.as_mut_ptr(), &mut n)
            };
            if r == -libc::ENOENT {
                return Ok(Vec::new());
            }
            if r == -libc::ERANGE && n > max && n < 1024 {
                max = n;
                continue;
            }
            if r < 0 {
                return Err(os_err(r.into()));
            }
            let n = n.min(max);
            let list = owners[..n]
                .iter()
                .filter(|p| !p.is_null())
                // SAFETY: NUL-terminated strings librbd filled in.
                .map(|p| {
                    unsafe { std::ffi::CStr::from_ptr(*p) }
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            // SAFETY: the array librbd filled, released once.
            unsafe { (api.rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), n) };
            return Ok(list);
        }
    }

    /// Break `owner`'s exclusive lock on the image; librbd blocklists the
    /// owner first (`rbd_blocklist_on_break_lock`), so a gateway taken for
    /// dead cannot write again before it reopens.
    pub(super) fn break_lock(&self, owner: &str) -> io::Result<()> {
        let o = cstr(owner)?;
        // SAFETY: an open image and a C string; mode 0 is exclusive.
        let r = unsafe { (self.api.rbd_lock_break)(self.image, 0, o.as_ptr()) };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        Ok(())
    }

    /// The SCSI outcome of librbd's error `r`. EROFS on an image opened
    /// for writing means another client holds its exclusive lock and
    /// would not give it up: retryable, not a write-protected medium.
    pub(super) fn result(&self, r: i64) -> MediaResult {
        match MediaResult::from_errno(r) {
            MediaResult::WriteProtected if !self.readonly => MediaResult::Unavailable,
            m => m,
        }
    }

    pub(super) fn check(&self, r: i64) -> io::Result<()> {
        if r == -ESHUTDOWN {
            self.fenced.store(true, Ordering::Release);
        }
        if r < 0 {
            return Err(os_err(r));
        }
        Ok(())
    }
}
