//! The completion-based seam between a target loop and its backing
//! stores (firecracker's Submitted/Executed engines, cloud-hypervisor's
//! AsyncIo): the loop submits a media task with a tag, and learns it is
//! finished by a [`Done`] in its [`CompletionQueue`], whose eventfd it
//! polls. One queue per loop takes completions from every engine:
//!
//! - io_uring ([`super::uring::Uring`]): plain reads, writes and flushes
//!   go to the kernel from the loop itself; the ring signals the same
//!   eventfd;
//! - the pool ([`Pool`]): bounded worker threads for stores with no
//!   asynchronous interface and for what a native engine does not offer
//!   (verify, write same, unmap, compare and write);
//! - inline: stores that never block (memory, `null`) answer at once
//!   without a trip through either.
//!
//! An asynchronous store with its own threads (librbd) completes the same
//! way: it pushes a [`Done`] from its callback, which wakes the loop.
//! Nothing here allocates per command: completions go to a vector the
//! loop swaps with its own, and jobs to a reused queue.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use scsi::{BlockDevice, CompletionSink, IoTask, MediaResult, Response};

/// The loop's name for one media task in flight.
pub type Tag = u32;

/// How a media task ended.
#[derive(Debug)]
pub enum Finished {
    /// A native operation (io_uring, an asynchronous store) and how it
    /// ended; the loop turns it into the SCSI answer with
    /// [`IoTask::complete`].
    Native(MediaResult),
    /// The task ran whole on a worker ([`IoTask::run`]).
    Ran(Response),
    /// The pool could not run the task (no thread would start) or the
    /// store panicked in it: the loop answers a hardware error.
    Failed,
}

/// A finished media task and its buffer.
#[derive(Debug)]
pub struct Done {
    pub tag: Tag,
    pub result: Finished,
    pub buf: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Completions for one loop, from any thread, with the eventfd that
/// signals them.
pub struct CompletionQueue {
    done: Mutex<Vec<Done>>,
    efd: OwnedFd,
}

impl CompletionQueue {
    pub fn new() -> io::Result<Arc<CompletionQueue>> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(CompletionQueue {
            done: Mutex::new(Vec::new()),
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    /// The eventfd: readable when completions are waiting.
    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// A second descriptor for the same eventfd, for a poller that must
    /// own what it watches.
    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.efd.try_clone()
    }

    /// Hand a completion to the loop, and wake it unless completions
    /// were already waiting: those signalled, and the loop takes all at
    /// once (it clears the eventfd before it takes, so a completion pushed
    /// after its take finds the vector empty and signals). One eventfd
    /// write per batch instead of per completion.
    pub fn push(&self, d: Done) {
        let mut q = lock(&self.done);
        let was_empty = q.is_empty();
        q.push(d);
        drop(q);
        if was_empty {
            self.signal();
        }
    }

    /// Wake the loop.
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a local array to our eventfd. A
        // full counter (EAGAIN) still leaves it readable: nothing is lost.
        unsafe { libc::write(self.efd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Reset the eventfd before draining (so a completion pushed while
    /// the loop drains wakes it again). Always before [`take`](Self::take):
    /// [`push`](Self::push) counts on it.
    pub fn clear(&self) {
        let mut cnt = [0u8; 8];
        // SAFETY: reading 8 bytes into a local array from our eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), cnt.as_mut_ptr().cast(), 8) };
    }

    /// Block until the eventfd is readable or `ms` pass (for tests and
    /// tools without an event loop).
    pub fn wait(&self, ms: i32) {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, ms) };
    }

    /// Move every waiting completion to `out` (swapping vectors, so
    /// neither side allocates in steady state).
    pub fn take(&self, out: &mut Vec<Done>) {
        let mut d = lock(&self.done);
        if out.is_empty() {
            std::mem::swap(&mut *d, out);
        } else {
            out.append(&mut d);
        }
    }
}

/// An asynchronous store (librbd) completes straight into the loop's queue.
impl CompletionSink for CompletionQueue {
    fn complete(&self, tag: u32, result: MediaResult, buf: Vec<u8>) {
        self.push(Done {
            tag,
            result: Finished::Native(result),
            buf,
        });
    }
}

/// Orders one LUN's media access between native engines and the
/// read-modify-write tasks (COMPARE AND WRITE, ORWRITE), per LUN: an ATS
/// heartbeat on one LUN never drains another LUN's I/O (SBC-4 §5.3 asks
/// for atomicity on the LU the command addresses, nothing wider).
#[derive(Default)]
pub struct LunGate {
    /// Read-modify-write tasks running or waiting on this LUN: while any
    /// does, plain I/O on every loop takes the pool, under the LU's lock.
    pub exclusive: AtomicUsize,
    /// Native operations in flight on this LUN, on all loops.
    pub native_inflight: AtomicUsize,
    idle: Mutex<()>,
    idle_cv: Condvar,
}

impl LunGate {
    /// Count a native operation in, unless a read-modify-write task holds
    /// the LUN. Counting in before looking at `exclusive`, while an
    /// exclusive task counts itself in before waiting for natives to
    /// drain, means whichever comes second sees the other (SeqCst).
    pub fn enter_native(&self) -> bool {
        self.native_inflight.fetch_add(1, Ordering::SeqCst);
        if self.exclusive.load(Ordering::SeqCst) == 0 {
            return true;
        }
        self.leave_native();
        false
    }

    /// A native operation ended.
    pub fn leave_native(&self) {
        if self.native_inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.exclusive.load(Ordering::SeqCst) > 0
        {
            let _g = lock(&self.idle);
            self.idle_cv.notify_all();
        }
    }

    /// On a worker: wait until no native operation is in flight on the
    /// LUN (the caller counted itself in `exclusive` first).
    fn wait_natives_idle(&self) {
        let mut g = lock(&self.idle);
        while self.native_inflight.load(Ordering::SeqCst) > 0 {
            // The timeout covers a wake-up between the load and the wait.
            g = self
                .idle_cv
                .wait_timeout(g, Duration::from_millis(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Run a task on a worker. A read-modify-write task (counted in its LUN's
/// gate when queued) first lets every loop's native I/O on the LUN
/// finish, so it sees and overlaps none of it (SBC-4 §5.3), and lets the
/// gate go when done.
fn run_gated(task: IoTask, dev: &dyn BlockDevice, gate: &LunGate, buf: &mut Vec<u8>) -> Response {
    let exclusive = task.is_exclusive();
    if exclusive {
        gate.wait_natives_idle();
    }
    // The gate goes even if the store panics.
    struct Leave<'a>(&'a LunGate, bool);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            if self.1 {
                self.0.exclusive.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    let _leave = Leave(gate, exclusive);
    task.run(dev, buf)
}

/// A task for the pool.
pub struct Job {
    pub tag: Tag,
    pub task: IoTask,
    pub dev: Arc<dyn BlockDevice>,
    pub gate: Arc<LunGate>,
    pub buf: Vec<u8>,
}

struct PoolState {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
    stop: bool,
    /// Tasks running per LUN (by its gate's address): a few entries, so a
    /// list (a hash map's hashing cost ~8% of the pool's read rate).
    running: Vec<(usize, usize)>,
}

impl PoolState {
    fn running(&self, key: usize) -> usize {
        self.running
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| *n)
    }

    fn start(&mut self, key: usize) {
        match self.running.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => self.running.push((key, 1)),
        }
    }

    fn finish(&mut self, key: usize) {
        if let Some(i) = self.running.iter().position(|(k, _)| *k == key) {
            self.running[i].1 -= 1;
            if self.running[i].1 == 0 {
                self.running.swap_remove(i);
            }
        }
    }
}

/// How many LUNs' worth of threads a pool may grow to (see [`Pool`]).
const POOL_LUNS: usize = 8;

fn lun_key(gate: &Arc<LunGate>) -> usize {
    Arc::as_ptr(gate) as usize
}

/// A pool of worker threads for one loop, each running whole tasks
/// against blocking stores. A LUN runs at most `max` tasks at once (tgtd's
/// `-t`, which tgt gives each LU); threads start on demand, up to `max`
/// per LUN with work and [`POOL_LUNS`] x `max` in all, so a store that
/// stops answering holds its own `max` threads and never the others'
/// (before, its stuck commands took every thread, and other LUNs' I/O
/// stalled behind them).
pub struct Pool {
    state: Mutex<PoolState>,
    cv: Condvar,
    max: usize,
    name: String,
    cq: Arc<CompletionQueue>,
}

impl Pool {
    pub fn new(max: usize, name: String, cq: Arc<CompletionQueue>) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(PoolState {
                jobs: VecDeque::new(),
                idle: 0,
                threads: 0,
                stop: false,
                running: Vec::new(),
            }),
            cv: Condvar::new(),
            max: max.max(1),
            name,
            cq,
        })
    }

    /// Queue a task; its [`Done`] arrives in the loop's queue. A
    /// read-modify-write task holds its LUN's gate from now until done.
    pub fn submit(self: &Arc<Self>, job: Job) {
        if job.task.is_exclusive() {
            job.gate.exclusive.fetch_add(1, Ordering::SeqCst);
        }
        let mut st = lock(&self.state);
        st.jobs.push_back(job);
        if self.wants_thread(&st) {
            self.spawn_worker(st);
            return;
        }
        drop(st);
        // Any idle worker can take the task if its LUN is below its share,
        // and none can if not: one is enough.
        self.cv.notify_one();
    }

    /// Whether a queued task needs a new thread: nobody is idle, its LUN
    /// is below its share, and other LUNs' tasks hold so many threads that
    /// fewer than `max` are left for it (with one LUN: up to `max`, as a
    /// plain bounded pool). Asked when a task is queued and whenever a
    /// worker takes one (the threads that were started for one LUN may
    /// all go to it, leaving a later LUN's task without).
    fn wants_thread(&self, st: &PoolState) -> bool {
        if st.idle > 0 {
            return false;
        }
        let Some(key) = st
            .jobs
            .iter()
            .map(|j| lun_key(&j.gate))
            .find(|k| st.running(*k) < self.max)
        else {
            return false;
        };
        let others: usize = st
            .running
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(_, n)| n)
            .sum();
        st.threads < (self.max + others).min(self.max * POOL_LUNS)
    }

    /// Start a worker (the state's lock is let go first).
    fn spawn_worker(self: &Arc<Self>, mut st: MutexGuard<'_, PoolState>) {
        st.threads += 1;
        let me = self.clone();
        let n = st.threads;
        drop(st);
        let spawned = std::thread::Builder::new()
            .name(format!("{}.io{n}", self.name))
            .spawn(move || me.work());
        if spawned.is_err() {
            let mut st = lock(&self.state);
            st.threads -= 1;
            if st.threads == 0 {
                // Nobody would ever run what is queued: fail it (the
                // commands get CHECK CONDITION) rather than leave it.
                let jobs: Vec<Job> = st.jobs.drain(..).collect();
                drop(st);
                tracing::warn!(pool = %self.name, "cannot start an I/O thread");
                for j in jobs {
                    if j.task.is_exclusive() {
                        j.gate.exclusive.fetch_sub(1, Ordering::SeqCst);
                    }
                    self.cq.push(Done {
                        tag: j.tag,
                        result: Finished::Failed,
                        buf: j.buf,
                    });
                }
            }
        }
    }

    fn work(self: &Arc<Self>) {
        // The LUN of the task this worker ran last, counted out when it
        // next takes the lock (one lock per task, as before fairness).
        let mut ran: Option<usize> = None;
        loop {
            let job = {
                let mut st = lock(&self.state);
                if let Some(key) = ran.take() {
                    st.finish(key);
                }
                loop {
                    // The first task whose LUN is below its share.
                    let max = self.max;
                    let eligible = st
                        .jobs
                        .iter()
                        .position(|j| st.running(lun_key(&j.gate)) < max);
                    if let Some(j) = eligible.and_then(|i| st.jobs.remove(i)) {
                        st.start(lun_key(&j.gate));
                        if self.wants_thread(&st) {
                            self.spawn_worker(st);
                        }
                        break j;
                    }
                    if st.stop {
                        st.threads -= 1;
                        return;
                    }
                    st.idle += 1;
                    st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.idle -= 1;
                }
            };
            let Job {
                tag,
                task,
                dev,
                gate,
                mut buf,
            } = job;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_gated(task, &*dev, &gate, &mut buf)
            }));
            let result = match r {
                Ok(r) => Finished::Ran(r),
                // A store that panicked: the command fails, the pool lives.
                Err(_) => Finished::Failed,
            };
            ran = Some(lun_key(&gate));
            self.cq.push(Done { tag, result, buf });
        }
    }

    /// Run a task whose command was already answered (SANITIZE with
    /// IMMED) on a thread of its own, holding its LUN's gate as a pool
    /// task would; nothing comes back.
    pub fn run_detached(job: Job) {
        let Job {
            task,
            dev,
            gate,
            mut buf,
            ..
        } = job;
        let exclusive = task.is_exclusive();
        if exclusive {
            gate.exclusive.fetch_add(1, Ordering::SeqCst);
        }
        let gate_for_error = gate.clone();
        let spawned = std::thread::Builder::new()
            .name("sanitize".into())
            .spawn(move || {
                let r = run_gated(task, &*dev, &gate, &mut buf);
                if r.status != scsi::Status::Good {
                    tracing::warn!(status = ?r.status, "a detached task failed");
                }
            });
        if let Err(e) = spawned {
            // The task went with the closure: its LU leaves the sanitize
            // state; let its gate go too.
            if exclusive {
                gate_for_error.exclusive.fetch_sub(1, Ordering::SeqCst);
            }
            tracing::error!(error = %e, "cannot start a detached task");
        }
    }

    /// Let the workers end once the queue is empty.
    pub fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_all();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scsi::MemDevice;

    /// The eventfd's counter (and reset it).
    fn signals(cq: &CompletionQueue) -> u64 {
        let mut cnt = [0u8; 8];
        // SAFETY: reading 8 bytes into a local array from our eventfd.
        let n = unsafe { libc::read(cq.fd(), cnt.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_ne_bytes(cnt)
        } else {
            0
        }
    }

    /// Completions that pile up before the loop takes them wake it once
    /// (librbd completes each I/O on its own thread: one eventfd write
    /// each cost a syscall per I/O), and one after a take wakes it again.
    #[test]
    fn a_batch_of_completions_signals_once() {
        let cq = CompletionQueue::new().unwrap();
        let done = |tag| Done {
            tag,
            result: Finished::Native(MediaResult::Ok),
            buf: Vec::new(),
        };
        for tag in 0..3 {
            cq.push(done(tag));
        }
        assert_eq!(signals(&cq), 1);
        let mut out = Vec::new();
        cq.take(&mut out);
        assert_eq!(out.len(), 3);
        cq.push(done(3));
        assert_eq!(
            signals(&cq),
            1,
            "a completion after the take must wake the loop"
        );
        cq.take(&mut out);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn completions_arrive_with_their_tags() {
        let cq = CompletionQueue::new().unwrap();
        let pool = Pool::new(2, "t".into(), cq.clone());
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
        let gate = Arc::new(LunGate::default());
        let mut luns = scsi::LunSet::new(
            1,
            scsi::TargetPort {
                target_name: "iqn.x:t".into(),
                tpgt: 1,
                relative_port: 1,
            },
        );
        let mut cfg = scsi::LunConfig::tgt_defaults(1, scsi::LunId(0));
        cfg.size_bytes = 1 << 20;
        luns.insert(scsi::LunId(0), cfg);
        luns.add_nexus(scsi::NexusId(1));
        let mut n = 0;
        for tag in 0..20u32 {
            // READ(10) of one block at `tag`; the first gets the power-on
            // unit attention without reaching the pool.
            let cdb = [0x28, 0, 0, 0, 0, tag as u8, 0, 0, 1, 0];
            let req = scsi::Request {
                cdb: &cdb,
                nexus: scsi::NexusId(1),
                lun: scsi::LunId(0),
                expected_len: 512,
            };
            let mut buf = Vec::new();
            if let scsi::Outcome::Io(task) = luns.execute(&req, &mut buf) {
                pool.submit(Job {
                    tag,
                    task,
                    dev: dev.clone(),
                    gate: gate.clone(),
                    buf,
                });
                n += 1;
            }
        }
        let mut seen = Vec::new();
        let mut out = Vec::new();
        while seen.len() < n {
            cq.wait(5000);
            cq.clear();
            cq.take(&mut out);
            for d in out.drain(..) {
                assert!(matches!(d.result, Finished::Ran(ref r) if r.data_len == 512));
                seen.push(d.tag);
            }
        }
        seen.sort();
        assert_eq!(seen, (20 - n as u32..20).collect::<Vec<_>>());
    }
}
