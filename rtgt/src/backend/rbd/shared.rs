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

/// What the state's thread learns of the image without holding it.
pub(super) trait Probe: Send + Sync {
    /// The image client's address (it changes when the image is reopened).
    fn address(&self) -> Option<String>;
    /// Whether the image client holds the exclusive lock.
    fn owns_lock(&self) -> Option<bool>;
}

/// What the watch callbacks (and the device) tell the state's thread.
enum Msg {
    /// This gateway serves the image as port group `group`, port `rel`.
    ServeAs {
        group: u16,
        rel: u16,
    },
    /// Someone changed the state: read it, then acknowledge.
    Notify {
        id: u64,
        handle: u64,
    },
    /// The watch broke (the OSD restarted, the client was cut off).
    Lost,
    Stop,
}

struct Core {
    conn: Conn,
    oid: CString,
    /// A read and the object version it saw are one step (librados keeps
    /// the last version per ioctx): reads and writes take turns.
    io: Mutex<()>,
    /// The state last delivered; held while delivering, so subscribers see
    /// states one at a time.
    last: Mutex<Vec<u8>>,
    subs: Mutex<Vec<StateSubscriber>>,
    /// The port group this gateway registered (see
    /// [`ClusterState::gateways`]), removed when the LU goes.
    registered: Mutex<Option<u16>>,
    probe: Box<dyn Probe>,
}

/// The watch callbacks' argument: a way to the state's thread.
struct WatchArg(*mut Mutex<Sender<Msg>>);
// SAFETY: the pointee is a Mutex<Sender>, usable from any thread; the
// state's thread frees it after the watch is gone.
unsafe impl Send for WatchArg {}

/// The state of one image, shared with the other gateways.
pub(super) struct ClusterState {
    core: Arc<Core>,
    tx: Mutex<Sender<Msg>>,
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
        probe: Box<dyn Probe>,
    ) -> io::Result<ClusterState> {
        let conn = Conn::connect(spec, false)?;
        let core = Arc::new(Core {
            conn,
            oid: cstr(&format!("rtgt_pr.{name}"))?,
            io: Mutex::new(()),
            last: Mutex::new(Vec::new()),
            subs: Mutex::new(Vec::new()),
            registered: Mutex::new(None),
            probe,
        });
        // A watch needs an object; an existing one is left as it is.
        let r = core.write(None, None, CREATE_IDEMPOTENT);
        if r < 0 {
            return Err(os_err(r));
        }
        let (now, _) = core.read().map_err(os_err)?;
        *lock(&core.last) = now;
        let (tx, rx) = mpsc::channel();
        let arg = WatchArg(Box::into_raw(Box::new(Mutex::new(tx.clone()))));
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
        })
    }
}

/// Gateways register as extended attributes of the state object, one
/// per target port group: `rtgt.gw.<group>` = `<relative port> <address
/// of the gateway's image client>`.
const GATEWAY_XATTR: &str = "rtgt.gw.";

/// A gateway serving the image, as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Gateway {
    pub rel: u16,
    /// Its image client's address (as the exclusive lock names owners).
    pub address: String,
}

impl ClusterState {
    /// Serve as port group `group` (relative port `rel`): the state's
    /// thread registers this gateway, and keeps the registration current.
    pub(super) fn serve_as(&self, group: u16, rel: u16) {
        let _ = lock(&self.tx).send(Msg::ServeAs { group, rel });
    }

    /// Every gateway registered for the image, by port group.
    pub(super) fn gateways(&self) -> io::Result<std::collections::BTreeMap<u16, Gateway>> {
        let core = &self.core;
        let api = core.conn.api;
        let mut it: super::ffi::XattrIter = std::ptr::null_mut();
        // SAFETY: a live ioctx and C string, an out pointer for the
        // iterator, ended below.
        let r = unsafe { (api.rados_getxattrs)(core.conn.ioctx, core.oid.as_ptr(), &mut it) };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        let mut out = std::collections::BTreeMap::new();
        loop {
            let (mut name, mut val, mut len) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: a live iterator and out pointers; the strings stay
            // valid until the next call.
            let r = unsafe { (api.rados_getxattrs_next)(it, &mut name, &mut val, &mut len) };
            if r < 0 || name.is_null() {
                break;
            }
            // SAFETY: as above; `val` has `len` bytes.
            let (name, val) = unsafe {
                (
                    std::ffi::CStr::from_ptr(name)
                        .to_string_lossy()
                        .into_owned(),
                    String::from_utf8_lossy(std::slice::from_raw_parts(val.cast::<u8>(), len))
                        .into_owned(),
                )
            };
            let Some(group) = name
                .strip_prefix(GATEWAY_XATTR)
                .and_then(|g| g.parse::<u16>().ok())
            else {
                continue;
            };
            if let Some((rel, address)) = val.split_once(' ') {
                if let Ok(rel) = rel.parse() {
                    out.insert(
                        group,
                        Gateway {
                            rel,
                            address: address.to_string(),
                        },
                    );
                }
            }
        }
        // SAFETY: the iterator from getxattrs, ended once.
        unsafe { (api.rados_getxattrs_end)(it) };
        Ok(out)
    }

    /// Register (or update) this gateway as port group `group`.
    pub(super) fn register(&self, group: u16, gw: &Gateway) -> io::Result<()> {
        self.core.register(group, gw)
    }
}

impl Core {
    fn register(&self, group: u16, gw: &Gateway) -> io::Result<()> {
        let core = self;
        let name = cstr(&format!("{GATEWAY_XATTR}{group}"))?;
        let val = format!("{} {}", gw.rel, gw.address);
        // SAFETY: a live ioctx, C strings and a buffer of the length given.
        let r = unsafe {
            (core.conn.api.rados_setxattr)(
                core.conn.ioctx,
                core.oid.as_ptr(),
                name.as_ptr(),
                val.as_ptr().cast(),
                val.len(),
            )
        };
        if r < 0 {
            return Err(os_err(r.into()));
        }
        *lock(&core.registered) = Some(group);
        Ok(())
    }
}

impl Core {
    /// Register this gateway again if its image client changed (a reopen
    /// after fencing gives it a new address).
    fn keep_registered(&self, serving: &mut Option<(u16, Gateway)>) {
        let Some((group, gw)) = serving else {
            return;
        };
        let Some(address) = self.probe.address() else {
            return;
        };
        if gw.address == address {
            return;
        }
        let now = Gateway {
            rel: gw.rel,
            address,
        };
        match self.register(*group, &now) {
            Ok(()) => *gw = now,
            Err(e) => tracing::warn!(oid = ?self.oid, error = %e, "cannot register this gateway"),
        }
    }

    /// The image's lock moved to or from this gateway: every nexus of
    /// every gateway gets ASYMMETRIC ACCESS STATE CHANGED (SPC-4 §5.15.2.2).
    /// On a thread of its own: the change waits for every watcher's
    /// acknowledgement, this thread's included.
    fn access_state_changed(self: &Arc<Self>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rbd-alua".into())
            .spawn(move || {
                let r = me.update(&mut |cur| scsi::asymmetric_access_changed(cur));
                if let Err(e) = r {
                    tracing::warn!(oid = ?me.oid, result = ?e, "cannot announce an ALUA state change");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot announce an ALUA state change");
        }
    }

    /// Take this gateway's registration out (it no longer serves the LU).
    fn unregister(&self) {
        let Some(group) = lock(&self.registered).take() else {
            return;
        };
        let Ok(name) = cstr(&format!("{GATEWAY_XATTR}{group}")) else {
            return;
        };
        // SAFETY: a live ioctx and C strings.
        unsafe { (self.conn.api.rados_rmxattr)(self.conn.ioctx, self.oid.as_ptr(), name.as_ptr()) };
    }

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

    /// Tell the other gateways the state changed, and wait for them.
    fn notify(&self) {
        let api = self.conn.api;
        let mut reply: *mut c_char = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: a live ioctx and C string, no payload, out pointers for
        // the reply, which we free.
        let r = unsafe {
            let r = (api.rados_notify2)(
                self.conn.ioctx,
                self.oid.as_ptr(),
                std::ptr::null(),
                0,
                NOTIFY_TIMEOUT_MS,
                &mut reply,
                &mut len,
            );
            if !reply.is_null() {
                (api.rados_buffer_free)(reply);
            }
            r
        };
        if r < 0 {
            tracing::warn!(oid = ?self.oid, error = %os_err(r.into()), "a gateway did not acknowledge a change of the shared SCSI state in time");
        }
    }

    /// The state's thread: reads what others changed, keeps the watch,
    /// keeps this gateway registered, and tells every gateway's nexuses
    /// when the image's lock (so the ALUA states) moved here or away.
    fn serve(self: &Arc<Self>, rx: &mpsc::Receiver<Msg>, arg: WatchArg, handle: u64) {
        let mut handle = Some(handle);
        let mut serving: Option<(u16, Gateway)> = None;
        let mut owner = self.probe.owns_lock();
        loop {
            match rx.recv_timeout(POLL) {
                Ok(Msg::ServeAs { group, rel }) => {
                    serving = Some((
                        group,
                        Gateway {
                            rel,
                            address: String::new(),
                        },
                    ));
                    self.keep_registered(&mut serving);
                }
                Ok(Msg::Notify { id, handle: h }) => {
                    self.refresh();
                    // SAFETY: a live ioctx and C string, no payload.
                    unsafe {
                        (self.conn.api.rados_notify_ack)(
                            self.conn.ioctx,
                            self.oid.as_ptr(),
                            id,
                            h,
                            std::ptr::null(),
                            0,
                        )
                    };
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
                    self.keep_registered(&mut serving);
                    let now = self.probe.owns_lock();
                    if now.is_some() && owner.is_some() && now != owner {
                        self.access_state_changed();
                    }
                    owner = now.or(owner);
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.unregister();
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
    _data: *mut c_void,
    _len: usize,
) {
    // SAFETY: `arg` is the WatchArg pointer, alive while the watch is.
    let tx = unsafe { &*(arg as *const Mutex<Sender<Msg>>) };
    let _ = lock(tx).send(Msg::Notify {
        id: notify_id,
        handle,
    });
}

/// librados: the watch is broken and must be made again.
unsafe extern "C" fn on_watch_error(arg: *mut c_void, _handle: u64, _err: c_int) {
    // SAFETY: as in `on_notify`.
    let tx = unsafe { &*(arg as *const Mutex<Sender<Msg>>) };
    let _ = lock(tx).send(Msg::Lost);
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
    fn update(&self, f: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Result<(), MediaResult> {
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
