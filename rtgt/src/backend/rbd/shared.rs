//! The SCSI state every gateway serving an image must agree on
//! (persistent reservations), kept in a RADOS object beside the image:
//! `rtgt_pr.<image id>[@snap]` in the image's pool. It changes only by
//! compare-and-set (a write asserting the object version that was read),
//! so two gateways changing it at once cannot both win: the loser reads
//! again and judges its command against the winner's state. Every gateway
//! watches the object; a change is announced with a notify, which returns
//! once every watcher has read the new state and acknowledged it (or
//! [`NOTIFY_TIMEOUT_MS`] passed), so a PREEMPT is answered only after the
//! other gateways enforce it. A gateway also re-reads every [`POLL`], in
//! case a notify was lost while its watch was being re-established.
//!
//! The state has its own cluster client, apart from the image's: a
//! gateway fenced for the image's exclusive lock still sees and serves
//! reservations, and the watch does not move with image reopens.

use std::ffi::{c_char, c_int, c_void, CString};
use std::io;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use scsi::{MediaResult, SharedState, StateSubscriber};

use super::conn::{cstr, os_err, Conn};
use super::spec::RbdSpec;

/// Largest state read; scsi bounds registrations so that the encoded
/// state stays far below this.
const MAX_STATE: usize = 256 << 10;

/// How long a change waits for the other gateways to acknowledge it: well
/// inside the 30 s an initiator gives a command. A gateway that died
/// without closing its watch holds every change this long until the
/// cluster times its watch out.
pub const NOTIFY_TIMEOUT_MS: u64 = 5000;

/// How often the state is read again without being told.
const POLL: Duration = Duration::from_secs(5);

/// Lost compare-and-set races before a change gives up (NOT READY, which
/// initiators retry).
const MAX_RACES: usize = 64;

/// `LIBRADOS_CREATE_EXCLUSIVE` / `LIBRADOS_CREATE_IDEMPOTENT`.
const CREATE_EXCLUSIVE: c_int = 1;
const CREATE_IDEMPOTENT: c_int = 0;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the watch callbacks tell the state's thread.
enum Msg {
    /// Someone changed the state: read it, then acknowledge.
    Notify {
        id: u64,
        handle: u64,
    },
    /// The watch broke (the OSD restarted, the client was cut off).
    Lost,
    Stop,
}

pub(super) struct Core {
    pub(super) conn: Conn,
    pub(super) oid: CString,
    /// A read and the object version it saw are one step (librados keeps
    /// the last version per ioctx): reads and writes take turns.
    io: Mutex<()>,
    /// The state last delivered; held while delivering, so subscribers see
    /// states one at a time.
    last: Mutex<Vec<u8>>,
    subs: Mutex<Vec<StateSubscriber>>,
    /// This gateway's part in ALUA (see [`super::alua`]).
    pub(super) alua: super::alua::Local,
}

/// The watch callbacks' argument.
struct Callbacks {
    /// To the state's thread.
    tx: Mutex<Sender<Msg>>,
    /// For answering a roll call at once (see [`super::alua`]).
    core: std::sync::Weak<Core>,
}

/// A pointer to the callbacks' argument.
struct WatchArg(*mut Callbacks);
// SAFETY: the pointee is Sync; the state's thread frees it after the
// watch is gone.
unsafe impl Send for WatchArg {}

/// The state of one image, shared with the other gateways.
pub(super) struct ClusterState {
    pub(super) core: Arc<Core>,
    tx: Mutex<Sender<Msg>>,
    /// Wakes the ALUA thread; dropped with us, which ends it.
    alua: Mutex<Sender<()>>,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState")
            .field("oid", &self.core.oid)
            .finish()
    }
}

impl Drop for ClusterState {
    fn drop(&mut self) {
        let _ = lock(&self.tx).send(Msg::Stop);
    }
}

impl ClusterState {
    /// Connect, create the object if it is not there, read it and watch it.
    /// `name` is the image's id (and `@snap`).
    pub(super) fn open(
        spec: &RbdSpec,
        name: &str,
        probe: Box<dyn super::alua::Probe>,
    ) -> io::Result<ClusterState> {
        let conn = Conn::connect(spec, false)?;
        let core = Arc::new(Core {
            conn,
            oid: cstr(&format!("rtgt_pr.{name}"))?,
            io: Mutex::new(()),
            last: Mutex::new(Vec::new()),
            subs: Mutex::new(Vec::new()),
            alua: super::alua::Local::new(probe),
        });
        // A watch needs an object; an existing one is left as it is.
        let r = core.write(None, None, CREATE_IDEMPOTENT);
        if r < 0 {
            return Err(os_err(r));
        }
        let (now, _) = core.read().map_err(os_err)?;
        *lock(&core.last) = now;
        // Started first: if starting the state's thread fails, dropping
        // its sender ends it.
        let alua = super::alua::spawn(&core)?;
        let (tx, rx) = mpsc::channel();
        let arg = WatchArg(Box::into_raw(Box::new(Callbacks {
            tx: Mutex::new(tx.clone()),
            core: Arc::downgrade(&core),
        })));
        let handle = match core.watch(&arg) {
            Ok(h) => h,
            Err(e) => {
                // SAFETY: no watch was registered with it.
                drop(unsafe { Box::from_raw(arg.0) });
                return Err(e);
            }
        };
        let c = core.clone();
        let spawned = std::thread::Builder::new()
            .name("rbd-pr".into())
            .spawn(move || c.serve(&rx, arg, handle));
        // On failure the closure (with the watch argument) is gone with the
        // thread that never ran: the watch is left to the cluster's
        // timeout rather than freeing what it points to.
        spawned?;
        Ok(ClusterState {
            core,
            tx: Mutex::new(tx),
            alua: Mutex::new(alua),
        })
    }
}

impl Core {
    /// The object's bytes and version (`Err(-errno)`).
    fn read(&self) -> Result<(Vec<u8>, u64), i64> {
        let api = self.conn.api;
        let _turn = lock(&self.io);
        let mut buf = vec![0u8; MAX_STATE];
        // SAFETY: a live ioctx, a C string and a buffer of the length given.
        let r = unsafe {
            (api.rados_read)(
                self.conn.ioctx,
                self.oid.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        if r < 0 {
            return Err(r.into());
        }
        // SAFETY: a live ioctx; our turn, so the version is this read's.
        let ver = unsafe { (api.rados_get_last_version)(self.conn.ioctx) };
        buf.truncate(r as usize);
        Ok((buf, ver))
    }

    /// Replace the object with `data` if its version is still `ver`
    /// (`None` with `data`: only if it does not exist); with neither,
    /// create it (`create` says how). 0 or -errno: -ERANGE / -EOVERFLOW
    /// when the version moved, -EEXIST when it was created meanwhile.
    fn write(&self, data: Option<&[u8]>, ver: Option<u64>, create: c_int) -> i64 {
        let api = self.conn.api;
        let _turn = lock(&self.io);
        // SAFETY: creates an op we release below.
        let op = unsafe { (api.rados_create_write_op)() };
        if op.is_null() {
            return -i64::from(libc::ENOMEM);
        }
        // SAFETY: a live op; `data` outlives `operate`, which copies it.
        let r = unsafe {
            match ver {
                Some(v) => (api.rados_write_op_assert_version)(op, v),
                None => (api.rados_write_op_create)(op, create, std::ptr::null()),
            }
            if let Some(d) = data {
                (api.rados_write_op_write_full)(op, d.as_ptr().cast(), d.len());
            }
            let r = (api.rados_write_op_operate)(
                op,
                self.conn.ioctx,
                self.oid.as_ptr(),
                std::ptr::null_mut(),
                0,
            );
            (api.rados_release_write_op)(op);
            r
        };
        r.into()
    }

    fn watch(&self, arg: &WatchArg) -> io::Result<u64> {
        let mut handle = 0u64;
        // SAFETY: a live ioctx and C string; `arg` stays valid until the
        // watch is removed and flushed (see `serve`).
        let r = unsafe {
            (self.conn.api.rados_watch2)(
                self.conn.ioctx,
                self.oid.as_ptr(),
                &mut handle,
                on_notify,
                on_watch_error,
                arg.0.cast(),
            )
        };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        Ok(handle)
    }

    fn unwatch(&self, handle: u64) {
        // SAFETY: a live ioctx; a handle from `watch` (an error only means
        // the cluster had already dropped it).
        unsafe { (self.conn.api.rados_unwatch2)(self.conn.ioctx, handle) };
    }

    /// Hand `state` to the subscribers unless it is what they have.
    fn deliver(&self, state: &[u8]) {
        let mut last = lock(&self.last);
        if *last == state {
            return;
        }
        last.clear();
        last.extend_from_slice(state);
        for s in lock(&self.subs).iter() {
            s(state);
        }
    }

    fn refresh(&self) {
        match self.read() {
            Ok((state, _)) => self.deliver(&state),
            Err(e) => {
                tracing::warn!(oid = ?self.oid, error = %os_err(e), "cannot read the shared SCSI state")
            }
        }
    }

    /// Notify every watcher with `payload` and wait (up to `timeout_ms`)
    /// for their acknowledgements: librados' reply (acks with their
    /// payloads, then those that timed out) and the result.
    pub(super) fn notify_with(&self, payload: &[u8], timeout_ms: u64) -> (Vec<u8>, i64) {
        let api = self.conn.api;
        let mut reply: *mut c_char = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: a live ioctx and C string, a payload of the length
        // given, out pointers for the reply, copied and freed here.
        unsafe {
            let r = (api.rados_notify2)(
                self.conn.ioctx,
                self.oid.as_ptr(),
                payload.as_ptr().cast(),
                payload.len() as c_int,
                timeout_ms,
                &mut reply,
                &mut len,
            );
            let mut out = Vec::new();
            if !reply.is_null() {
                out.extend_from_slice(std::slice::from_raw_parts(reply.cast::<u8>(), len));
                (api.rados_buffer_free)(reply);
            }
            (out, r.into())
        }
    }

    /// Tell the other gateways the state changed, and wait for them.
    fn notify(&self) {
        let (_, r) = self.notify_with(&[], NOTIFY_TIMEOUT_MS);
        if r < 0 {
            tracing::warn!(oid = ?self.oid, error = %os_err(r), "a gateway did not acknowledge a change of the shared SCSI state in time");
        }
    }

    /// Acknowledge notification `id` on watch `handle`, with `payload`.
    pub(super) fn ack(&self, id: u64, handle: u64, payload: &[u8]) {
        // SAFETY: a live ioctx and C string, a payload of the length given.
        unsafe {
            (self.conn.api.rados_notify_ack)(
                self.conn.ioctx,
                self.oid.as_ptr(),
                id,
                handle,
                payload.as_ptr().cast(),
                payload.len() as c_int,
            )
        };
    }

    /// The state's thread: reads what others changed, and keeps the watch.
    fn serve(&self, rx: &mpsc::Receiver<Msg>, arg: WatchArg, handle: u64) {
        let mut handle = Some(handle);
        loop {
            match rx.recv_timeout(POLL) {
                Ok(Msg::Notify { id, handle: h }) => {
                    self.refresh();
                    self.ack(id, h, &[]);
                }
                Ok(Msg::Lost) => {
                    if let Some(h) = handle.take() {
                        self.unwatch(h);
                    }
                    handle = self.watch(&arg).ok();
                    self.refresh();
                }
                Err(RecvTimeoutError::Timeout) => {
                    if handle.is_none() {
                        handle = self.watch(&arg).ok();
                    }
                    self.refresh();
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.alua.unregister(self);
        if let Some(h) = handle {
            self.unwatch(h);
        }
        // SAFETY: a live cluster handle; after this no callback runs.
        unsafe { (self.conn.api.rados_watch_flush)(self.conn.rados) };
        // SAFETY: allocated in `open`, no watch refers to it any more.
        drop(unsafe { Box::from_raw(arg.0) });
    }
}

/// librados: someone notified the object.
unsafe extern "C" fn on_notify(
    arg: *mut c_void,
    notify_id: u64,
    handle: u64,
    _notifier: u64,
    data: *mut c_void,
    len: usize,
) {
    // SAFETY: `arg` is the WatchArg pointer, alive while the watch is.
    let cb = unsafe { &*(arg as *const Callbacks) };
    let payload: &[u8] = if data.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: librados' payload of `len` bytes, for this call.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }
    };
    if payload == super::alua::ROLL_CALL {
        // Answered here, at once: the state's thread may be busy, and a
        // late answer reads as a dead gateway.
        if let Some(core) = cb.core.upgrade() {
            core.ack(notify_id, handle, &core.alua.answer());
        }
        return;
    }
    let _ = lock(&cb.tx).send(Msg::Notify {
        id: notify_id,
        handle,
    });
}

/// librados: the watch is broken and must be made again.
unsafe extern "C" fn on_watch_error(arg: *mut c_void, _handle: u64, _err: c_int) {
    // SAFETY: as in `on_notify`.
    let cb = unsafe { &*(arg as *const Callbacks) };
    let _ = lock(&cb.tx).send(Msg::Lost);
}

impl ClusterState {
    /// Serve as port group `group` (relative port `rel`): the ALUA
    /// thread registers this gateway now, and keeps it registered.
    pub(super) fn serve_as(&self, group: u16, rel: u16) {
        self.core.alua.serve_as(group, rel);
        let _ = lock(&self.alua).send(());
    }

    /// SET TARGET PORT GROUPS: see [`super::alua::prefer`]; the ALUA
    /// thread then takes the roll at once, and announces the change.
    pub(super) fn prefer(&self, group: u16) -> io::Result<bool> {
        let done = super::alua::prefer(&self.core, group)?;
        let _ = lock(&self.alua).send(());
        Ok(done)
    }
}

impl SharedState for ClusterState {
    fn update(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Result<(), MediaResult> {
        self.core.update(f)
    }

    fn subscribe(&self, f: StateSubscriber) {
        let last = lock(&self.core.last);
        f(&last);
        lock(&self.core.subs).push(f);
    }
}

impl Core {
    /// See [`SharedState::update`].
    pub(super) fn update(
        &self,
        f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(), MediaResult> {
        let core = self;
        for _ in 0..MAX_RACES {
            let (cur, ver) = match core.read() {
                Ok((cur, ver)) => (cur, Some(ver)),
                // Removed by hand: start again from nothing.
                Err(e) if e == -i64::from(libc::ENOENT) => (Vec::new(), None),
                Err(e) => return Err(MediaResult::from_errno(e)),
            };
            let Some(new) = f(&cur) else {
                core.deliver(&cur);
                return Ok(());
            };
            match core.write(Some(&new), ver, CREATE_EXCLUSIVE) {
                0 => {
                    core.deliver(&new);
                    core.notify();
                    return Ok(());
                }
                r if [libc::ERANGE, libc::EOVERFLOW, libc::EEXIST, libc::ENOENT]
                    .iter()
                    .any(|e| r == -i64::from(*e)) =>
                {
                    continue
                }
                r => return Err(MediaResult::from_errno(r)),
            }
        }
        Err(MediaResult::Unavailable)
    }
}
