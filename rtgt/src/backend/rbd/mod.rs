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
//! has no verb for (VERIFY, ORWRITE, GET LBA STATUS, a COMPARE AND WRITE
//! wider than one 512-byte sector) runs on the worker pool through the
//! blocking calls.
//!
//! Modules: `spec` (path and options), `conn` (a cluster connection with
//! its image), `aio` (submissions and librbd's callback), `shared` (the
//! SCSI state all gateways share: persistent reservations), `alua` (the
//! gateways' port groups and their states), `ffi`.
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

mod aio;
mod alua;
mod conn;
mod ffi;
mod shared;
mod spec;

use std::ffi::{c_int, c_void};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use scsi::{BlockDevice, CompletionSink, MediaResult, NativeIo, PortGroup, SharedState, SimpleIo};

use aio::Pending;
pub use conn::wait_closed;
use conn::{os_err, Conn};
pub use spec::RbdSpec;

/// librados' notify reply parser, for the fuzz target (see [`alua`]).
#[doc(hidden)]
pub fn parse_notify_acks(reply: &[u8]) -> Option<Vec<Vec<u8>>> {
    alua::parse_acks(reply)
}

/// Seconds before a cluster operation (OSD or monitor) gives up; below
/// the 30 s command timeout of Linux's SCSI layer, so our NOT READY comes
/// before the initiator aborts the task.
pub const OP_TIMEOUT_S: u32 = 25;

/// The span librbd's compare-and-write accepts: one aligned sector.
const CAW_SECTOR: u64 = 512;

/// Ceph's EBLOCKLISTED (the cluster fenced this client).
const ESHUTDOWN: i64 = 108;

struct Inner {
    spec: RbdSpec,
    readonly: bool,
    /// The size last read, for when librbd cannot say (fenced).
    size: AtomicU64,
    conn: RwLock<Arc<Conn>>,
    /// A reconnect is under way.
    reopening: AtomicBool,
    /// A second handle on the image for read-modify-writes (see
    /// [`Inner::exclusively`]), opened when first needed.
    rmw: std::sync::Mutex<Option<Arc<Conn>>>,
}

/// An RBD image behind a LUN.
pub struct RbdDevice {
    inner: Arc<Inner>,
    /// Persistent reservations as every gateway serving the image sees
    /// them (`None` only for a read-only image whose client may not write
    /// the state object: reservations are then this gateway's alone).
    shared: Option<shared::ClusterState>,
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
        // `<fsid>/<pool id>/<image id>[@snap]`: the state object is named
        // for the last part.
        let name = conn
            .identity
            .splitn(3, '/')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let inner = Arc::new(Inner {
            spec,
            readonly,
            size: AtomicU64::new(0),
            conn: RwLock::new(Arc::new(conn)),
            reopening: AtomicBool::new(false),
            rmw: std::sync::Mutex::new(None),
        });
        let probe = Box::new(ImageProbe(Arc::downgrade(&inner)));
        let shared = match shared::ClusterState::open(&inner.spec, &name, probe) {
            Ok(s) => Some(s),
            Err(e) if readonly => {
                tracing::warn!(image = %inner.spec.image, error = %e, "persistent reservations on this read-only image are not shared with other gateways");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(RbdDevice { shared, inner })
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

/// What the shared state's thread asks of the image (its client's
/// address, whether it holds the lock), without keeping it open.
struct ImageProbe(Weak<Inner>);

impl ImageProbe {
    fn conn(&self) -> Option<Arc<Conn>> {
        let inner = self.0.upgrade()?;
        let c = inner.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        (!c.fenced.load(Ordering::Acquire)).then_some(c)
    }
}

impl alua::Probe for ImageProbe {
    fn address(&self) -> Option<String> {
        self.conn()?.address().ok()
    }
    fn lock_owners(&self) -> Option<Vec<String>> {
        self.conn()?.lock_owners().ok()
    }
    fn break_lock(&self, owner: &str) -> bool {
        self.conn().is_some_and(|c| c.break_lock(owner).is_ok())
    }
}

impl Inner {
    /// Run `f` while this gateway holds the image's exclusive lock and
    /// gives it to no one: through a second handle on the image, which
    /// takes the lock by hand (`rbd_lock_acquire`: the first handle gives
    /// it up, as it does to any client asking; a hand-taken lock is not
    /// given up when asked) and lets go of it after `f`. Other gateways'
    /// writes wait meanwhile (or end NOT READY, which initiators retry), so
    /// a read-modify-write is atomic across gateways. A separate handle,
    /// because taking the lock by hand switches a handle's lock policy for
    /// good, and the first handle must keep passing the lock on request.
    fn exclusively(&self, f: &mut dyn FnMut(&dyn BlockDevice)) -> Result<(), MediaResult> {
        let mut slot = self.rmw.lock().unwrap_or_else(|p| p.into_inner());
        let c = match &*slot {
            Some(c) if !c.fenced.load(Ordering::Acquire) => c.clone(),
            _ => {
                *slot = None;
                let c = Conn::open(&self.spec, false).map_err(|e| MediaResult::from_io(&e))?;
                let c = Arc::new(c);
                *slot = Some(c.clone());
                c
            }
        };
        // SAFETY: an open image; mode 0 is exclusive.
        let r = unsafe { (c.api.rbd_lock_acquire)(c.image, 0) };
        if r < 0 {
            if i64::from(r) == -ESHUTDOWN {
                *slot = None;
            }
            return Err(c.result(r.into()));
        }
        f(&Held(&c));
        // SAFETY: an open image whose lock we took.
        let r = unsafe { (c.api.rbd_lock_release)(c.image) };
        if r < 0 {
            // Closing the handle lets the lock go.
            tracing::warn!(image = %self.spec.image, error = %os_err(r.into()), "cannot release the image lock; reopening");
            *slot = None;
        }
        Ok(())
    }
}

/// The image through the handle that holds its lock (see
/// [`Inner::exclusively`]): blocking calls only.
struct Held<'a>(&'a Conn);

impl BlockDevice for Held<'_> {
    fn size(&self) -> u64 {
        let c = self.0;
        let mut size = 0u64;
        // SAFETY: an open image and an out pointer.
        let r = unsafe { (c.api.rbd_get_size)(c.image, &mut size) };
        if r < 0 {
            0
        } else {
            size
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
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
        self.conn_or_err()?.read(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.conn_or_err()?.write(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.conn_or_err()?.flush()
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
        let calls = Pending::calls(op);
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
        let (issued, err) = unsafe { Pending::issue(&conn, op, p) };
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

    fn shared_state(&self) -> Option<&dyn SharedState> {
        self.shared.as_ref().map(|s| s as &dyn SharedState)
    }

    fn exclusive_view(
        &self,
        f: &mut dyn FnMut(&dyn BlockDevice),
    ) -> Option<Result<(), MediaResult>> {
        // A read-only image has no writer to keep out.
        (!self.inner.readonly).then(|| self.inner.exclusively(f))
    }

    fn prefer_port_group(&self, group: u16) -> Option<Result<bool, MediaResult>> {
        let shared = self.shared.as_ref()?;
        Some(shared.prefer(group).map_err(|e| MediaResult::from_io(&e)))
    }

    fn serve_port(&self, group: u16, rel: u16) {
        if let Some(s) = &self.shared {
            s.serve_as(group, rel);
        }
    }

    /// Implicit ALUA across the gateways serving the image: see
    /// [`alua`]. Every gateway reports the same, from the cluster.
    fn port_groups(&self, group: u16, rel: u16) -> Option<Result<Vec<PortGroup>, MediaResult>> {
        let shared = self.shared.as_ref()?;
        Some(alua::port_groups(&shared.core, group, rel).map_err(|e| MediaResult::from_io(&e)))
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
