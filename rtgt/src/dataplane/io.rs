//! SCSI execution on a target's loop: commands the session releases go
//! through the LUNs' emulation, and media work to the loop's io_uring or
//! the worker pool; results go back to the session.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use iscsi::session::{status, transport_sense, ConnId, Token};
use scsi::{IoTask, LunId, Outcome, Request, SimpleIo};

use super::conn::IO_BUDGET;
use super::session::Session;
use super::{LunGate, LunIo, TargetCtx};

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

/// One io_uring operation on a LUN ended (or was not started).
fn ring_done(gate: &LunGate) {
    if gate.ring_inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
        gate.ring_idle.notify_waiters();
    }
}

/// A command handed to media I/O.
struct Started {
    token: Token,
    conn: ConnId,
    read: bool,
}

impl TargetCtx {
    /// Execute every command the session has ready, in order.
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
            let io = self.shared.device(lun);
            let req = Request {
                cdb: cmd.cdb,
                nexus: s.setup.nexus,
                lun,
                expected_len: cmd.edtl,
            };
            let outcome = self.shared.luns().execute(&req, &mut buf);
            match outcome {
                Outcome::Done(r) => {
                    let a = m.handle_scsi_done(
                        started.token,
                        r.status as u8,
                        &r.sense,
                        r.data_len,
                        r.wanted,
                        buf,
                    );
                    drop(m);
                    s.record(a, &self.shared.stats.total, io.as_ref());
                }
                Outcome::Io(task) => {
                    drop(m);
                    self.start_io(s, started, io, task, buf);
                }
            }
        }
    }

    /// Finish a command without media I/O: a CHECK CONDITION the transport
    /// raises, or TASK SET FULL.
    fn refuse(&self, s: &Session, token: Token, st: u8, sense: &[u8], buf: Vec<u8>) {
        let a =
            s.m.borrow_mut()
                .handle_scsi_done(token, st, sense, 0, 0, buf);
        s.record(a, &self.shared.stats.total, None);
    }

    fn start_io(
        self: &Rc<Self>,
        s: &Rc<Session>,
        c: Started,
        io: Option<LunIo>,
        task: IoTask,
        mut buf: Vec<u8>,
    ) {
        let Some(io) = io else {
            // The LU vanished between emulation and I/O.
            let sense = transport_sense(0x05, 0x25, 0x00);
            self.refuse(s, c.token, status::CHECK_CONDITION, &sense, buf);
            return;
        };
        let (dev, gate) = (io.0.clone(), io.2.clone());
        if dev.is_nonblocking() {
            // Nothing to wait for (null, memory): answer at once rather
            // than paying for a trip through a worker.
            let r = task.run(&*dev, &mut buf);
            let a = s.m.borrow_mut().handle_scsi_done(
                c.token,
                r.status as u8,
                &r.sense,
                r.data_len,
                r.wanted,
                buf,
            );
            s.record(a, &self.shared.stats.total, Some(&io));
            return;
        }
        // Reads in flight pin their buffers until answered: bound them
        // per connection like collecting writes.
        let budget = s.handle(c.conn).map(|h| h.read_inflight.clone());
        let need = if c.read { task.wanted() } else { 0 };
        let used = budget.as_ref().map_or(0, |b| b.get());
        if need > 0 && used > 0 && used + need > IO_BUDGET {
            self.refuse(s, c.token, status::TASK_SET_FULL, &[], buf);
            return;
        }
        let charge = budget.map(|b| Charge::new(&b, need));
        let s = s.clone();
        let me = self.clone();
        let ring = self.uring.clone();
        // Plain reads, writes and flushes go through the loop's io_uring
        // unless a read-modify-write command holds this LU (the gate is per
        // LUN: other LUNs are not disturbed). Count ourselves in before
        // looking at `exclusive`, and an exclusive task counts itself in
        // before waiting for the rings to drain: whichever comes second
        // sees the other (SeqCst), so the two never overlap.
        let simple = match (ring.zip(dev.raw_fd()), task.simple(&buf)) {
            (Some(rf), Some(simple)) => {
                gate.ring_inflight.fetch_add(1, Ordering::SeqCst);
                if gate.exclusive.load(Ordering::SeqCst) == 0 {
                    Some((rf, simple))
                } else {
                    ring_done(&gate);
                    None
                }
            }
            _ => None,
        };
        if let Some(((ring, fd), simple)) = simple {
            tokio::task::spawn_local(async move {
                let _charge = charge;
                let (ok, mut buf) = match simple {
                    SimpleIo::Read { offset, len } => ring.read(fd, offset, buf, len).await,
                    SimpleIo::Write { offset, len, flush } => {
                        ring.write(fd, offset, buf, len, flush).await
                    }
                    SimpleIo::Flush => ring.fsync(fd, buf).await,
                };
                // The store stays open until the kernel is done.
                drop(dev);
                ring_done(&gate);
                let r = task.complete(ok, &mut buf);
                let a = s.m.borrow_mut().handle_scsi_done(
                    c.token,
                    r.status as u8,
                    &r.sense,
                    r.data_len,
                    r.wanted,
                    buf,
                );
                s.record(a, &me.shared.stats.total, Some(&io));
                s.wake(None);
            });
            return;
        }
        let exclusive = task.is_exclusive();
        if exclusive {
            gate.exclusive.fetch_add(1, Ordering::SeqCst);
        }
        tokio::task::spawn_local(async move {
            let _charge = charge;
            if exclusive {
                // Let every loop's ring I/O on this LUN finish so this
                // command sees and overlaps none of it (SBC-3 §5.2).
                loop {
                    let idle = gate.ring_idle.notified();
                    if gate.ring_inflight.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    idle.await;
                }
            }
            let joined = tokio::task::spawn_blocking(move || {
                let r = task.run(&*dev, &mut buf);
                (r, buf)
            })
            .await;
            if exclusive {
                gate.exclusive.fetch_sub(1, Ordering::SeqCst);
            }
            let a = match joined {
                Ok((r, buf)) => s.m.borrow_mut().handle_scsi_done(
                    c.token,
                    r.status as u8,
                    &r.sense,
                    r.data_len,
                    r.wanted,
                    buf,
                ),
                Err(_) => {
                    let sense = transport_sense(0x04, 0x44, 0x00);
                    s.m.borrow_mut().handle_scsi_done(
                        c.token,
                        status::CHECK_CONDITION,
                        &sense,
                        0,
                        0,
                        Vec::new(),
                    )
                }
            };
            s.record(a, &me.shared.stats.total, Some(&io));
            s.wake(None);
        });
    }
}
