//! SCSI execution on a target's loop: commands the session releases go
//! through the LUNs' emulation, media work to an engine (inline, the
//! loop's io_uring, or the pool) with a tag, and finished tags come back
//! through the loop's completion queue to their sessions. No task,
//! channel or allocation per I/O: a tag is a slot in [`InFlightTable`].

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use iscsi::session::{status, transport_sense, ConnId, Token};
use scsi::{IoTask, LunId, NativeIo, Outcome, Request, Response, SimpleIo};
use tokio::io::unix::AsyncFd;

use super::conn::IO_BUDGET;
use super::session::Session;
use super::{LunIo, TargetCtx};
use crate::backend::engine::{Done, Finished, Job, Tag};

/// Bytes charged to a connection's read budget until dropped (the command
/// answered, aborted, or its connection gone).
struct Charge {
    budget: Rc<Cell<u64>>,
    n: u64,
}

impl Charge {
    fn new(budget: &Rc<Cell<u64>>, n: u64) -> Charge {
        budget.set(budget.get() + n);
        Charge {
            budget: budget.clone(),
            n,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.set(self.budget.get() - self.n);
    }
}

/// A media task in flight: whose it is, and what its completion needs.
struct InFlight {
    session: Rc<Session>,
    token: Token,
    /// Keeps the store open (and its fd valid) until the engine is done.
    io: Rc<LunIo>,
    _charge: Option<Charge>,
    /// Kept for [`IoTask::complete`] when an engine runs the transfer
    /// natively; `None` when the pool runs the whole task.
    task: Option<IoTask>,
    /// When the task went to its engine (media latency).
    started: Instant,
}

/// Media tasks in flight on one loop, by tag (slots reused).
#[derive(Default)]
pub struct InFlightTable {
    slots: Vec<Option<InFlight>>,
    free: Vec<Tag>,
}

impl InFlightTable {
    fn insert(&mut self, f: InFlight) -> Tag {
        match self.free.pop() {
            Some(t) => {
                self.slots[t as usize] = Some(f);
                t
            }
            None => {
                self.slots.push(Some(f));
                (self.slots.len() - 1) as Tag
            }
        }
    }

    /// Tasks in the table.
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    fn slot(&mut self, t: Tag) -> Option<&mut InFlight> {
        self.slots.get_mut(t as usize)?.as_mut()
    }

    fn remove(&mut self, t: Tag) -> Option<InFlight> {
        let f = self.slots.get_mut(t as usize)?.take()?;
        self.free.push(t);
        Some(f)
    }
}

/// The parts of a command its media task needs after `poll_scsi`.
struct Started {
    token: Token,
    conn: ConnId,
    read: bool,
}

/// Take finished media tasks to their sessions whenever the loop's
/// eventfd fires; runs for the loop's life.
pub async fn reap(ctx: Rc<TargetCtx>) {
    let watched = ctx.cq.dup_fd().and_then(|fd| {
        // SAFETY: the descriptor is our own duplicate of the eventfd; it
        // moves into the AsyncFd and stays open, the same descriptor, for
        // the AsyncFd's whole life.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)
    });
    let afd = match watched {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the completion eventfd");
            return;
        }
    };
    let mut done: Vec<Done> = Vec::new();
    loop {
        let Ok(mut g) = afd.readable().await else {
            return;
        };
        g.clear_ready();
        ctx.cq.clear();
        if let Some(u) = &ctx.uring {
            u.drain(&mut done);
        }
        ctx.cq.take(&mut done);
        for d in done.drain(..) {
            ctx.finish_io(d);
        }
    }
}

impl TargetCtx {
    /// Execute every command the session has ready, in order; then hand
    /// the ring's batch of submissions to the kernel at once.
    pub fn run_scsi(self: &Rc<Self>, s: &Rc<Session>) {
        loop {
            let mut m = s.m.borrow_mut();
            let Some((cmd, mut buf)) = m.poll_scsi() else {
                break;
            };
            let lun = LunId(cmd.lun);
            let started = Started {
                token: cmd.token,
                conn: cmd.conn,
                read: cmd.read,
            };
            let req = Request {
                cdb: cmd.cdb,
                nexus: s.setup.nexus,
                lun,
                expected_len: cmd.edtl,
            };
            // Reads, writes and the other SBC commands that change no SCSI
            // state run on this loop's copy of the state, without a lock;
            // the rest (and anything with a unit attention or reservation
            // pending) under the exclusive lock.
            let (io, shared) = self.on_copies(&req, &mut buf);
            let outcome = match shared {
                Some(o) => o,
                None => {
                    let mut luns = self.shared.luns();
                    let o = luns.execute(&req, &mut buf);
                    let aborts = luns.take_task_aborts();
                    drop(luns);
                    if !aborts.is_empty() {
                        // PREEMPT AND ABORT: the preempted nexuses' tasks
                        // (never this one's, which preempted them).
                        self.abort_nexus_tasks_everywhere(aborts);
                    }
                    o
                }
            };
            match outcome {
                Outcome::Done(r) => {
                    drop(m);
                    self.answer(s, started.token, &r, buf, io.as_deref(), None);
                }
                Outcome::Io(task) => {
                    drop(m);
                    self.start_io(s, started, io, task, buf);
                }
            }
        }
        if let Some(u) = &self.uring {
            u.flush();
        }
    }

    /// From this loop's copies (one atomic load says they are current):
    /// the command's LUN store, and its outcome if the common path takes
    /// it ([`scsi::LunSet::execute_shared`]).
    fn on_copies(
        &self,
        req: &Request<'_>,
        buf: &mut Vec<u8>,
    ) -> (Option<Rc<LunIo>>, Option<Outcome>) {
        let mut l = self.loop_luns();
        let io = match l.devices.get(&req.lun) {
            Some(io) => Some(io.clone()),
            None => self.shared.device(req.lun).map(|io| {
                let io = Rc::new(io);
                l.devices.insert(req.lun, io.clone());
                io
            }),
        };
        let state = l
            .state
            .get_or_insert_with(|| self.shared.luns_shared().clone());
        (io, state.execute_shared(req, buf))
    }

    /// Finish a command with this answer.
    /// Finish a command with this answer; `started`: when its media task
    /// went to an engine (for the latency histograms).
    fn answer(
        &self,
        s: &Session,
        token: Token,
        r: &Response,
        buf: Vec<u8>,
        io: Option<&LunIo>,
        started: Option<Instant>,
    ) {
        let a = s.m.borrow_mut().handle_scsi_done(
            token,
            r.status as u8,
            &r.sense,
            r.data_len,
            r.wanted,
            buf,
        );
        let total = &self.shared.stats.total;
        let kind = s.record(a, total, io);
        if kind.is_none() {
            return; // aborted meanwhile: nothing was answered
        }
        total.record_status(r.status as u8, &r.sense);
        let Some(io) = io else { return };
        io.counters.record_status(r.status as u8, &r.sense);
        if let (Some(k), Some(t0)) = (kind, started) {
            let d = t0.elapsed();
            io.counters.latency[k as usize].observe(d);
            if let Some(h) = self.shared.stats.histogram() {
                h.tally(d.as_nanos() as u64);
            }
        }
        if kind == Some(crate::stats::Kind::Write) && io.thin.crossed(&*io.dev) {
            self.shared.luns().soft_threshold_reached(io.thin.lun);
        }
    }

    /// Put a media task in the table (and count it in flight: a store to
    /// this loop's own counter, summed over the loops at scrape).
    fn track(&self, f: InFlight) -> Tag {
        let mut t = self.inflight.borrow_mut();
        let tag = t.insert(f);
        self.counters.set_in_flight(t.len());
        tag
    }

    /// Take a media task out of the table.
    fn untrack(&self, t: Tag) -> Option<InFlight> {
        let mut table = self.inflight.borrow_mut();
        let f = table.remove(t)?;
        self.counters.set_in_flight(table.len());
        Some(f)
    }

    /// Finish a command without media I/O: a CHECK CONDITION the transport
    /// raises, or TASK SET FULL.
    fn refuse(&self, s: &Session, token: Token, st: u8, sense: &[u8], buf: Vec<u8>) {
        let a =
            s.m.borrow_mut()
                .handle_scsi_done(token, st, sense, 0, 0, buf);
        if s.record(a, &self.shared.stats.total, None).is_some() {
            self.shared.stats.total.record_status(st, sense);
        }
    }

    fn start_io(
        self: &Rc<Self>,
        s: &Rc<Session>,
        c: Started,
        io: Option<Rc<LunIo>>,
        mut task: IoTask,
        mut buf: Vec<u8>,
    ) {
        let Some(io) = io else {
            // The LU vanished between emulation and I/O.
            let sense = transport_sense(0x05, 0x25, 0x00);
            self.refuse(s, c.token, status::CHECK_CONDITION, &sense, buf);
            return;
        };
        // Reads pin their buffers until their Data-In is written: those
        // in flight and those answered but not yet taken by the peer count
        // against one budget per connection, like collecting writes (a
        // hostile initiator could otherwise queue 128 x 32 MiB reads, or
        // never read its answers).
        let budget = s.handle(c.conn).map(|h| h.read_inflight.clone());
        let need = if c.read { task.wanted() } else { 0 };
        let used = budget.as_ref().map_or(0, |b| b.get()) + s.m.borrow().tx_bytes(c.conn);
        if need > 0 && used > 0 && used + need > IO_BUDGET {
            self.refuse(s, c.token, status::TASK_SET_FULL, &[], buf);
            return;
        }
        // An EXTENDED COPY reads and writes the stores of the LUs it
        // names (on the pool: it may move gigabytes); other tasks ignore
        // this.
        task.attach_copy_stores(|id| self.shared.device(id).map(|l| l.dev));
        if task.is_immediate() {
            // SANITIZE with IMMED: GOOD now, the sanitize on its own
            // thread (the LU answers SANITIZE IN PROGRESS meanwhile).
            let good = Response {
                status: scsi::Status::Good,
                sense: Vec::new(),
                data_len: 0,
                wanted: task.wanted(),
            };
            let (dev, gate) = (io.dev.clone(), io.gate.clone());
            crate::backend::engine::Pool::run_detached(Job {
                tag: 0,
                task,
                dev,
                gate,
                buf: Vec::new(),
            });
            buf.clear();
            self.answer(s, c.token, &good, buf, Some(&io), None);
            return;
        }
        if io.dev.is_nonblocking() && !task.off_loop() {
            // Inline: nothing to wait for (null, memory), so answer at
            // once rather than paying for a trip through an engine.
            let t0 = Instant::now();
            let r = task.run(&*io.dev, &mut buf);
            self.answer(s, c.token, &r, buf, Some(&io), Some(t0));
            return;
        }
        if io.dev.is_async() {
            // A store with its own asynchronous interface (librbd) runs
            // what it has verbs for; it completes into this loop's queue.
            // The LUN gate still orders these against read-modify-write
            // tasks on the pool.
            buf = match task.native(&buf) {
                Some(op) if !native_empty(op) && io.gate.enter_native() => {
                    let tag = self.track(InFlight {
                        session: s.clone(),
                        token: c.token,
                        io: io.clone(),
                        _charge: budget.clone().map(|b| Charge::new(&b, need)),
                        task: None,
                        started: Instant::now(),
                    });
                    match io.dev.submit(tag, op, buf, &self.sink) {
                        Ok(()) => {
                            if let Some(f) = self.inflight.borrow_mut().slot(tag) {
                                f.task = Some(task);
                            }
                            return;
                        }
                        Err(b) => {
                            io.gate.leave_native();
                            self.untrack(tag);
                            b
                        }
                    }
                }
                _ => buf,
            };
        }
        // Plain reads, writes and flushes go through the loop's io_uring
        // unless a read-modify-write task holds this LUN (the gate is per
        // LUN: other LUNs are not disturbed).
        let native = match (&self.uring, io.dev.raw_fd(), task.simple(&buf)) {
            (Some(u), Some(fd), Some(op)) if !empty(op) && io.gate.enter_native() => {
                Some((u, fd, op))
            }
            _ => None,
        };
        let charge = budget.map(|b| Charge::new(&b, need));
        let mut f = InFlight {
            session: s.clone(),
            token: c.token,
            io,
            _charge: charge,
            task: None,
            started: Instant::now(),
        };
        match native {
            Some((u, fd, op)) => {
                f.task = Some(task);
                let tag = self.track(f);
                u.submit(tag, fd, op, buf);
            }
            None => {
                let (dev, gate) = (f.io.dev.clone(), f.io.gate.clone());
                let tag = self.track(f);
                self.pool.submit(Job {
                    tag,
                    task,
                    dev,
                    gate,
                    buf,
                });
            }
        }
    }

    /// An engine finished a media task: answer its command (unless it was
    /// aborted meanwhile, which the session knows).
    fn finish_io(&self, d: Done) {
        let Some(f) = self.untrack(d.tag) else {
            return;
        };
        let mut buf = d.buf;
        let r = match (d.result, f.task) {
            (Finished::Native(result), Some(task)) => {
                f.io.gate.leave_native();
                task.complete(result, &mut buf)
            }
            // The pool caught a panic in the store, or could not run it.
            (Finished::Failed, _) | (Finished::Native(_), None) => Response {
                status: scsi::Status::CheckCondition,
                sense: transport_sense(0x04, 0x44, 0x00).to_vec(),
                data_len: 0,
                wanted: 0,
            },
            (Finished::Ran(r), _) => r,
        };
        self.answer(&f.session, f.token, &r, buf, Some(&f.io), Some(f.started));
        f.session.wake(None);
        drop((f.session, f.io, f._charge));
        if self.inflight.borrow().is_empty() && self.sessions.borrow().is_empty() {
            // The last task of a loop whose sessions have all gone (its
            // buffers freed only now, after the trim `conn_closed` did):
            // give that memory back too.
            // SAFETY: malloc_trim only releases free memory.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// A native operation on nothing is answered by the ordinary path.
fn native_empty(op: NativeIo<'_>) -> bool {
    match op {
        NativeIo::Simple(s) => empty(s),
        NativeIo::Discard { ranges } => ranges.is_empty(),
        NativeIo::WriteSame { len, .. } => len == 0,
        NativeIo::CompareAndWrite { len, .. } => len == 0,
    }
}

/// A transfer of nothing never goes to the kernel (a zero-length read
/// would read as end of file).
fn empty(op: SimpleIo) -> bool {
    match op {
        SimpleIo::Read { len, .. } | SimpleIo::Write { len, .. } => len == 0,
        SimpleIo::Flush => false,
    }
}
