//! Ceph RBD images as backing stores (`--bstype rbd`), as tgt's `bs_rbd`
//! names them: the path is `[pool/]image[@snap]` (pool `rbd` by default;
//! a snapshot is served read-only) and `--bsopts` takes
//! `conf=<ceph.conf>;id=<client id>;cluster=<name>`. Any other
//! `key=value` there is passed to librados as a Ceph option (for example
//! `rbd_cache=true` or `rados_osd_op_timeout=10`).
//!
//! I/O is asynchronous: reads, writes, flushes, discards, write-same,
//! write-zeroes and compare-and-write go to `rbd_aio_*`, and librbd's
//! callback only hands the result to the target loop's completion queue
//! ([`scsi::CompletionSink`]), whose eventfd wakes the loop. What librbd
//! has no verb for (VERIFY, ORWRITE, a COMPARE AND WRITE across an object
//! boundary) runs on the worker pool through the blocking calls.
//!
//! Defaults differ from librbd's where a SCSI disk needs it: the client
//! cache is off (a write is acknowledged once RADOS has it on stable
//! storage, so FUA needs no flush), partial discards zero their range
//! (UNMAP then reads back zeros, as LBPRZ promises), and every cluster
//! operation times out after [`OP_TIMEOUT_S`] seconds, so a command ends
//! with NOT READY (retried by initiators) before Linux's 30 s SCSI timeout
//! rather than hanging while the cluster is unreachable. A client the
//! cluster fenced (blocklisted; librbd answers ESHUTDOWN) reconnects and
//! reopens the image in the background; commands meanwhile get NOT READY.

mod ffi;

use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use scsi::{BlockDevice, CompletionSink, MediaResult, NativeIo, SimpleIo};

use ffi::Api;

/// Seconds before a cluster operation (OSD or monitor) gives up; below
/// the 30 s command timeout of Linux's SCSI layer, so our NOT READY comes
/// before the initiator aborts the task.
pub const OP_TIMEOUT_S: u32 = 25;

/// The span librbd's compare-and-write accepts: one aligned sector.
const CAW_SECTOR: u64 = 512;

/// Ceph's EBLOCKLISTED (the cluster fenced this client).
const ESHUTDOWN: i64 = 108;

/// Where an image is and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    pub pool: String,
    pub image: String,
    pub snap: Option<String>,
    /// `conf=`: the ceph.conf to read (librados' default search if unset).
    pub conf: Option<String>,
    /// `id=`: the client id (`client.<id>`; `admin` if unset).
    pub id: Option<String>,
    /// `cluster=`: the cluster name (`ceph` if unset).
    pub cluster: Option<String>,
    /// Other `key=value` options, set on the cluster handle in order.
    pub options: Vec<(String, String)>,
}

impl RbdSpec {
    /// Parse tgt's path `[pool/]image[@snap]` and `bsopts`
    /// (`;`-separated `key=value`).
    pub fn parse(path: &str, bsopts: Option<&str>) -> Result<RbdSpec, String> {
        let (pool, rest) = match path.split_once('/') {
            Some((p, r)) => (p, r),
            None => ("rbd", path),
        };
        let (image, snap) = match rest.split_once('@') {
            Some((i, s)) => (i, Some(s.to_string())),
            None => (rest, None),
        };
        if pool.is_empty() || image.is_empty() || snap.as_deref() == Some("") {
            return Err(format!("bad rbd image path '{path}'"));
        }
        let mut spec = RbdSpec {
            pool: pool.to_string(),
            image: image.to_string(),
            snap,
            conf: None,
            id: None,
            cluster: None,
            options: Vec::new(),
        };
        for o in bsopts.unwrap_or("").split(';').map(str::trim) {
            if o.is_empty() {
                continue;
            }
            let Some((k, v)) = o.split_once('=') else {
                return Err(format!("bad rbd option '{o}'"));
            };
            let v = v.to_string();
            match k.trim() {
                "conf" => spec.conf = Some(v),
                "id" => spec.id = Some(v),
                "cluster" => spec.cluster = Some(v),
                k if !k.is_empty() => spec.options.push((k.to_string(), v)),
                _ => return Err(format!("bad rbd option '{o}'")),
            }
        }
        Ok(spec)
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn os_err(r: i64) -> io::Error {
    io::Error::from_raw_os_error(i32::try_from(-r).unwrap_or(libc::EIO))
}

/// One cluster connection with its image open.
struct Conn {
    api: &'static Api,
    rados: ffi::Rados,
    ioctx: ffi::IoCtx,
    image: ffi::Image,
    /// The cluster fenced this client: reopen before more I/O.
    fenced: AtomicBool,
    /// Opened read-only (a snapshot, or asked).
    readonly: bool,
    /// `<cluster fsid>/<pool id>/<image id>[@snap]`: the same on every
    /// gateway (see [`BlockDevice::identity`]).
    identity: String,
    /// librbd's client cache is on for this image (from any source:
    /// bsopts, ceph.conf, pool or image settings).
    cache: bool,
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
    fn open(spec: &RbdSpec, readonly: bool) -> io::Result<Conn> {
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

    /// The SCSI outcome of librbd's error `r`. EROFS on an image opened
    /// for writing means another client holds its exclusive lock and
    /// would not give it up: retryable, not a write-protected medium.
    fn result(&self, r: i64) -> MediaResult {
        match MediaResult::from_errno(r) {
            MediaResult::WriteProtected if !self.readonly => MediaResult::Unavailable,
            m => m,
        }
    }

    fn check(&self, r: i64) -> io::Result<()> {
        if r == -ESHUTDOWN {
            self.fenced.store(true, Ordering::Release);
        }
        if r < 0 {
            return Err(os_err(r));
        }
        Ok(())
    }
}

struct Inner {
    spec: RbdSpec,
    readonly: bool,
    /// The size last read, for when librbd cannot say (fenced).
    size: AtomicU64,
    conn: RwLock<Arc<Conn>>,
    /// A reconnect is under way.
    reopening: AtomicBool,
}

/// An RBD image behind a LUN.
pub struct RbdDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdDevice")
            .field("spec", &self.inner.spec)
            .finish()
    }
}

impl RbdDevice {
    /// Connect and open the image (blocking: call it off the event loops).
    pub fn open(spec: RbdSpec, readonly: bool) -> io::Result<RbdDevice> {
        let readonly = readonly || spec.snap.is_some();
        let conn = Conn::open(&spec, readonly)?;
        Ok(RbdDevice {
            inner: Arc::new(Inner {
                spec,
                readonly,
                size: AtomicU64::new(0),
                conn: RwLock::new(Arc::new(conn)),
                reopening: AtomicBool::new(false),
            }),
        })
    }

    /// The connection to use now; `None` while a fenced one is replaced
    /// (the reconnect is started if it was not).
    fn conn(&self) -> Option<Arc<Conn>> {
        let c = self
            .inner
            .conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !c.fenced.load(Ordering::Acquire) {
            return Some(c);
        }
        Inner::reopen(&self.inner);
        None
    }

    fn conn_or_err(&self) -> io::Result<Arc<Conn>> {
        self.conn().ok_or_else(|| os_err(-ESHUTDOWN))
    }
}

impl Inner {
    /// Reconnect in the background (once at a time), retrying every
    /// second until it works or the LUN is gone.
    fn reopen(this: &Arc<Inner>) {
        if this.reopening.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(this);
        let spawned = std::thread::Builder::new()
            .name("rbd-reopen".into())
            .spawn(move || loop {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                match Conn::open(&inner.spec, inner.readonly) {
                    Ok(c) => {
                        tracing::warn!(image = %inner.spec.image, "rbd image reopened after the cluster fenced this client");
                        *inner.conn.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
                        inner.reopening.store(false, Ordering::Release);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(image = %inner.spec.image, error = %e, "rbd reopen failed; retrying");
                        drop(inner);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        if spawned.is_err() {
            this.reopening.store(false, Ordering::Release);
        }
    }
}

/// One submission in flight: what librbd's callback hands back.
struct Pending {
    tag: u32,
    sink: Arc<dyn CompletionSink>,
    buf: Vec<u8>,
    conn: Arc<Conn>,
    /// A read of this many bytes into `buf`'s spare capacity.
    read_len: Option<usize>,
    /// COMPARE AND WRITE's range, and where librbd reports the first
    /// difference.
    caw: Option<(u64, u64)>,
    mismatch: u64,
    /// Completions still to come (several for a multi-range UNMAP).
    left: AtomicUsize,
    /// The first error among them (0: none).
    err: AtomicI64,
}

impl Pending {
    /// Record one completion; the last hands everything to the loop.
    ///
    /// # Safety
    /// `p` came from `Box::into_raw` and this is one of its `left`
    /// completions.
    unsafe fn one_done(p: *mut Pending, r: i64) {
        // SAFETY: live until the last completion frees it below; only
        // these fields are touched while librbd may still use the buffer.
        let (err, left, read_len) = unsafe { (&(*p).err, &(*p).left, (*p).read_len) };
        // A read must bring every byte asked for: librbd trims one past
        // the image's end (shrunk underneath us), and the rest of the
        // buffer would be uninitialised memory. A write reports 0 or its
        // length.
        let r = match read_len {
            Some(n) if r >= 0 && r as usize != n => -i64::from(libc::EIO),
            _ => r,
        };
        if r < 0 {
            let _ = err.compare_exchange(0, r, Ordering::AcqRel, Ordering::Acquire);
        }
        if left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // SAFETY: the last completion owns the box.
        let mut pend = unsafe { Box::from_raw(p) };
        let err = pend.err.load(Ordering::Acquire);
        let result = if err == 0 {
            if let Some(n) = pend.read_len {
                // SAFETY: librbd filled all `n` reserved bytes (it returned
                // no error for the whole read).
                unsafe { pend.buf.set_len(n) };
            }
            MediaResult::Ok
        } else {
            if err == -ESHUTDOWN {
                pend.conn.fenced.store(true, Ordering::Release);
            }
            match pend.caw {
                Some((offset, len)) if err == -i64::from(libc::EILSEQ) => {
                    MediaResult::Miscompare(caw_mismatch(pend.mismatch, offset, len))
                }
                _ => pend.conn.result(err),
            }
        };
        let Pending { tag, sink, buf, .. } = *pend;
        sink.complete(tag, result, buf);
    }
}

/// The first differing byte from the start of a compare-and-write, from
/// librbd's `mismatch_off`. librbd 16 gives the object's start in the
/// image plus the offset within the request (measured: 37 for a
/// difference at byte 37 of a request at 4608, 4 MiB for byte 0 of one at
/// 4 MiB); an image offset, as the header documents, is taken too. The
/// range lies within one sector, so the remainder modulo the sector is
/// the offset either way when the first reading does not apply.
fn caw_mismatch(mismatch: u64, offset: u64, len: u64) -> u64 {
    match mismatch.checked_sub(offset) {
        Some(rel) if rel < len => rel,
        _ => mismatch % CAW_SECTOR,
    }
}

/// librbd's completion callback: take the return value, release the
/// completion, hand over.
unsafe extern "C" fn on_complete(c: ffi::Completion, arg: *mut c_void) {
    let p = arg.cast::<Pending>();
    // SAFETY: `p` is live (its `left` counts this completion), and so is
    // its connection's API table.
    let conn: &Arc<Conn> = unsafe { &(*p).conn };
    let api = conn.api;
    // SAFETY: `c` is the completion librbd calls us for.
    let r = unsafe { (api.rbd_aio_get_return_value)(c) } as i64;
    // SAFETY: we release it exactly once, here.
    unsafe { (api.rbd_aio_release)(c) };
    // SAFETY: as above; this is one of `left`.
    unsafe { Pending::one_done(p, r) };
}

impl RbdDevice {
    /// Issue the librbd calls for `op`, each with its own completion
    /// sharing `p`. Returns how many were issued before one failed to
    /// start (with its error).
    ///
    /// # Safety
    /// `p` is live with `left` at least the number of calls `op` makes.
    unsafe fn issue(conn: &Conn, op: NativeIo<'_>, p: *mut Pending) -> (usize, i64) {
        let api = conn.api;
        let img = conn.image;
        let mut issued = 0;
        let arg: *mut c_void = p.cast();
        // SAFETY: `p` is live; these point into it.
        let (buf, mis) = unsafe { (&mut (*p).buf, &raw mut (*p).mismatch) };
        let mut failed = 0i64;
        let mut call = |f: &mut dyn FnMut(ffi::Completion) -> i64| -> bool {
            let mut c: ffi::Completion = std::ptr::null_mut();
            // SAFETY: `p` outlives the completion (see `Pending::one_done`).
            let r = unsafe { (api.rbd_aio_create_completion)(arg, on_complete, &mut c) };
            if r < 0 {
                failed = r.into();
                return false;
            }
            let r = f(c);
            if r < 0 {
                // SAFETY: never handed to librbd's queue.
                unsafe { (api.rbd_aio_release)(c) };
                failed = r;
                return false;
            }
            issued += 1;
            true
        };
        // SAFETY (each call below): an open image; buffers inside the
        // pending record, which lives until the completion.
        let ok = unsafe {
            match op {
                NativeIo::Simple(SimpleIo::Read { offset, len }) => {
                    buf.clear();
                    buf.reserve(len);
                    let ptr = buf.as_mut_ptr().cast::<c_char>();
                    call(&mut |c| (api.rbd_aio_read)(img, offset, len, ptr, c).into())
                }
                NativeIo::Simple(SimpleIo::Write { offset, len, .. }) => {
                    let ptr = buf.as_ptr().cast::<c_char>();
                    call(&mut |c| (api.rbd_aio_write)(img, offset, len, ptr, c).into())
                }
                NativeIo::Simple(SimpleIo::Flush) => {
                    call(&mut |c| (api.rbd_aio_flush)(img, c).into())
                }
                NativeIo::Discard { ranges } => ranges.iter().all(|&(off, len)| {
                    call(&mut |c| (api.rbd_aio_discard)(img, off, len, c).into())
                }),
                NativeIo::WriteSame {
                    offset,
                    len,
                    block,
                    zeros,
                    unmap,
                } => {
                    let n = len as usize;
                    if unmap {
                        call(&mut |c| (api.rbd_aio_discard)(img, offset, len, c).into())
                    } else if zeros {
                        call(&mut |c| (api.rbd_aio_write_zeroes)(img, offset, n, c, 0, 0).into())
                    } else {
                        let ptr = buf.as_ptr().cast::<c_char>();
                        call(&mut |c| {
                            (api.rbd_aio_writesame)(img, offset, n, ptr, block, c, 0).into()
                        })
                    }
                }
                NativeIo::CompareAndWrite { offset, len } => {
                    let cmp = buf.as_ptr().cast::<c_char>();
                    let data = buf.as_ptr().add(len).cast::<c_char>();
                    call(&mut |c| {
                        (api.rbd_aio_compare_and_write)(img, offset, len, cmp, data, c, mis, 0)
                            as i64
                    })
                }
            }
        };
        (issued, if ok { 0 } else { failed.min(-1) })
    }

    /// How many librbd calls `op` takes.
    fn calls(op: NativeIo<'_>) -> usize {
        match op {
            NativeIo::Discard { ranges } => ranges.len(),
            _ => 1,
        }
    }
}

impl BlockDevice for RbdDevice {
    fn size(&self) -> u64 {
        let last = self.inner.size.load(Ordering::Relaxed);
        let Ok(c) = self.conn_or_err() else {
            return last;
        };
        let mut size = 0u64;
        // SAFETY: an open image and an out pointer.
        let r = unsafe { (c.api.rbd_get_size)(c.image, &mut size) };
        if r < 0 {
            return last;
        }
        self.inner.size.store(size, Ordering::Relaxed);
        size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let c = self.conn_or_err()?;
        // SAFETY: an open image and a buffer of `buf.len()` bytes.
        let r = unsafe { (c.api.rbd_read)(c.image, offset, buf.len(), buf.as_mut_ptr().cast()) };
        c.check(r as i64)?;
        if r as usize != buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let c = self.conn_or_err()?;
        // SAFETY: an open image and a buffer of `buf.len()` bytes.
        let r = unsafe { (c.api.rbd_write)(c.image, offset, buf.len(), buf.as_ptr().cast()) };
        c.check(r as i64)?;
        if r as usize != buf.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let c = self.conn_or_err()?;
        // SAFETY: an open image.
        c.check(unsafe { (c.api.rbd_flush)(c.image) }.into())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let c = self.conn_or_err()?;
        // SAFETY: an open image.
        c.check(unsafe { (c.api.rbd_discard)(c.image, offset, len) }.into())
    }

    fn read_only(&self) -> bool {
        self.inner.readonly
    }

    fn identity(&self) -> Option<String> {
        self.conn().map(|c| c.identity.clone())
    }

    fn is_async(&self) -> bool {
        true
    }

    fn submit(
        &self,
        tag: u32,
        op: NativeIo<'_>,
        buf: Vec<u8>,
        sink: &Arc<dyn CompletionSink>,
    ) -> Result<(), Vec<u8>> {
        let Some(conn) = self.conn() else {
            // Reconnecting after a fence: the initiator retries.
            sink.complete(tag, MediaResult::Unavailable, buf);
            return Ok(());
        };
        match op {
            // With the client cache on, FUA needs a flush after the write:
            // the blocking path does both.
            NativeIo::Simple(SimpleIo::Write { flush: true, .. }) if conn.cache => return Err(buf),
            // librbd 16 compares and writes only within one 512-byte
            // sector (else EINVAL, measured): wider ones go the serialized
            // blocking way (read, compare, write under the LUN's gate).
            NativeIo::CompareAndWrite { offset, len }
                if len == 0 || offset / CAW_SECTOR != (offset + len as u64 - 1) / CAW_SECTOR =>
            {
                return Err(buf)
            }
            _ => {}
        }
        let calls = Self::calls(op);
        let p = Box::into_raw(Box::new(Pending {
            tag,
            sink: sink.clone(),
            buf,
            read_len: match op {
                NativeIo::Simple(SimpleIo::Read { len, .. }) => Some(len),
                _ => None,
            },
            caw: match op {
                NativeIo::CompareAndWrite { offset, len } => Some((offset, len as u64)),
                _ => None,
            },
            conn: conn.clone(),
            mismatch: 0,
            left: AtomicUsize::new(calls),
            err: AtomicI64::new(0),
        }));
        // SAFETY: `p` is live with `left == calls`.
        let (issued, err) = unsafe { Self::issue(&conn, op, p) };
        if issued < calls {
            // Account for the calls never made, as failed ones; the last
            // accounted completion (maybe this one) hands over.
            for _ in issued..calls {
                // SAFETY: each of these is one of `left` never issued.
                unsafe { Pending::one_done(p, err) };
            }
        }
        Ok(())
    }

    fn map_status(&self, offset: u64) -> io::Result<(bool, u64)> {
        let c = self.conn_or_err()?;
        let size = self.size();
        if offset >= size {
            return Ok((true, 0));
        }
        // Look at most this far ahead: one call stays bounded on images
        // without an object map.
        let window = (size - offset).min(1 << 30);
        let mut scan = Scan {
            at: offset,
            mapped: None,
            end: offset,
            stopped: false,
        };
        // SAFETY: an open image, a callback with the signature librbd
        // expects, and `scan` live for the call.
        let r = unsafe {
            (c.api.rbd_diff_iterate2)(
                c.image,
                std::ptr::null(),
                offset,
                window,
                1,
                0,
                on_extent,
                (&raw mut scan).cast(),
            )
        };
        if r < 0 && !scan.stopped {
            c.check(r.into())?;
        }
        Ok(match scan.mapped {
            Some(true) => (true, scan.end - offset),
            Some(false) => (false, scan.end - offset),
            None => (false, window),
        })
    }
}

/// The state of a GET LBA STATUS scan over librbd's extents.
struct Scan {
    at: u64,
    /// Whether `at` is mapped, once known.
    mapped: Option<bool>,
    /// Where the run sharing that state ends (so far).
    end: u64,
    /// The callback ended the iteration (its [`STOP`] is not an error).
    stopped: bool,
}

/// Returned by [`on_extent`] to end the iteration early.
const STOP: c_int = -1;

/// `rbd_diff_iterate2`'s callback: extents come in order.
unsafe extern "C" fn on_extent(off: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Scan` passed to rbd_diff_iterate2.
    let s = unsafe { &mut *arg.cast::<Scan>() };
    let end = off + len as u64;
    let exists = exists != 0;
    let r = match s.mapped {
        None if exists && off <= s.at => {
            s.mapped = Some(true);
            s.end = end;
            0
        }
        None if exists => {
            // A hole up to this extent.
            s.mapped = Some(false);
            s.end = off;
            STOP
        }
        None => 0,
        Some(true) if exists && off == s.end => {
            s.end = end;
            0
        }
        Some(_) => STOP,
    };
    s.stopped = r == STOP;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_write_mismatch_offsets() {
        // librbd 16's form: object start + offset in the request.
        assert_eq!(caw_mismatch(37, 4608, 512), 37);
        assert_eq!(caw_mismatch(4 << 20, 4 << 20, 512), 0);
        assert_eq!(caw_mismatch((4 << 20) + 5, (4 << 20) + 1024, 512), 5);
        // An image offset.
        assert_eq!(caw_mismatch(4608 + 37, 4608, 512), 37);
    }

    #[test]
    fn paths_and_options_parse_as_tgt_names_them() {
        let s = RbdSpec::parse("disk1", None).unwrap();
        assert_eq!(
            (s.pool.as_str(), s.image.as_str(), s.snap.as_deref()),
            ("rbd", "disk1", None)
        );
        let s = RbdSpec::parse(
            "vols/disk1@before",
            Some("conf=/etc/ceph/ceph.conf;id=admin;cluster=ceph;rbd_cache=true"),
        )
        .unwrap();
        assert_eq!(s.pool, "vols");
        assert_eq!(s.image, "disk1");
        assert_eq!(s.snap.as_deref(), Some("before"));
        assert_eq!(s.conf.as_deref(), Some("/etc/ceph/ceph.conf"));
        assert_eq!(s.id.as_deref(), Some("admin"));
        assert_eq!(s.cluster.as_deref(), Some("ceph"));
        assert_eq!(s.options, [("rbd_cache".to_string(), "true".to_string())]);
        for bad in ["", "/img", "pool/", "pool/img@"] {
            assert!(RbdSpec::parse(bad, None).is_err(), "{bad}");
        }
        assert!(RbdSpec::parse("img", Some("conf")).is_err());
    }
}
