//! io_uring on a target's loop: plain reads, writes and flushes go to the
//! kernel from the loop itself and complete through the loop's eventfd
//! (its [`CompletionQueue`]'s, registered with the ring), so a data
//! command costs no thread hand-off at all (the worker pool's futex
//! wake-ups were ~40% of the daemon's cycles under 4K random reads).
//! Submissions queue up while the loop handles a batch of PDUs and go to
//! the kernel in one `io_uring_enter` ([`Uring::flush`]). The ring owns
//! every buffer while the kernel may touch it; read buffers are not
//! zero-filled first, their length is set once the kernel has filled them.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};
use scsi::{MediaResult, SimpleIo};

use super::engine::{CompletionQueue, Done, Finished, Tag};

/// Submission queue entries.
const ENTRIES: u32 = 512;
/// Completion queue entries: room for every command a busy loop can have
/// in flight (sessions x queue depth). Beyond it the kernel parks
/// completions on an overflow list that only a later `io_uring_enter`
/// flushes, which `drain` does.
const CQ_ENTRIES: u32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Fsync,
}

/// One media operation, possibly several kernel requests long (a short
/// transfer goes on where it stopped; a FUA write is followed by fdatasync).
struct Op {
    tag: Tag,
    kind: Kind,
    fd: RawFd,
    offset: u64,
    len: usize,
    at: usize,
    flush: bool,
    /// Owned here while the kernel may touch it.
    buf: Vec<u8>,
}

pub struct Uring {
    ring: RefCell<IoUring>,
    ops: RefCell<Vec<Option<Op>>>,
    free: RefCell<Vec<usize>>,
    inflight: Cell<usize>,
    /// Entries pushed since the last submit.
    unsubmitted: Cell<bool>,
    /// Operations waiting for room in the submission queue (it was full
    /// and the kernel would not take entries right then).
    waiting: RefCell<std::collections::VecDeque<usize>>,
}

impl Uring {
    /// A ring that signals `cq`'s eventfd; fails where io_uring is not
    /// available (old kernels, seccomp), and the loop then uses the pool.
    pub fn new(cq: &CompletionQueue) -> io::Result<Uring> {
        Uring::with_sizes(cq, ENTRIES, CQ_ENTRIES)
    }

    /// A ring with these submission and completion queue sizes.
    pub fn with_sizes(cq: &CompletionQueue, sq: u32, cqe: u32) -> io::Result<Uring> {
        let ring = IoUring::builder().setup_cqsize(cqe).build(sq)?;
        ring.submitter().register_eventfd(cq.fd())?;
        Ok(Uring {
            ring: RefCell::new(ring),
            ops: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            inflight: Cell::new(0),
            unsubmitted: Cell::new(false),
            waiting: RefCell::new(std::collections::VecDeque::new()),
        })
    }

    /// Operations the kernel has not completed yet.
    pub fn inflight(&self) -> usize {
        self.inflight.get()
    }

    /// Start `op` on `fd` with `buf` (the Data-Out of a write; any buffer
    /// for a read, which gets `len` bytes). Its [`Done`] comes from
    /// [`drain`](Uring::drain). The caller keeps `fd` open until then.
    pub fn submit(&self, tag: Tag, fd: RawFd, op: SimpleIo, mut buf: Vec<u8>) {
        let (kind, offset, len, flush) = match op {
            SimpleIo::Read { offset, len } => {
                buf.clear();
                buf.reserve(len);
                (Kind::Read, offset, len, false)
            }
            SimpleIo::Write { offset, len, flush } => {
                (Kind::Write, offset, len.min(buf.len()), flush)
            }
            SimpleIo::Flush => (Kind::Fsync, 0, 0, false),
        };
        let op = Op {
            tag,
            kind,
            fd,
            offset,
            len,
            at: 0,
            flush,
            buf,
        };
        let key = {
            let mut ops = self.ops.borrow_mut();
            match self.free.borrow_mut().pop() {
                Some(k) => {
                    ops[k] = Some(op);
                    k
                }
                None => {
                    ops.push(Some(op));
                    ops.len() - 1
                }
            }
        };
        self.inflight.set(self.inflight.get() + 1);
        self.push(key);
    }

    /// Queue the next kernel request of operation `key` (behind any that
    /// already wait for room, to keep their order).
    fn push(&self, key: usize) {
        if !self.waiting.borrow().is_empty() || !self.try_push(key) {
            self.waiting.borrow_mut().push_back(key);
        }
    }

    /// Put operation `key`'s next request in the submission queue; false
    /// if there is no room even after handing the queue to the kernel.
    fn try_push(&self, key: usize) -> bool {
        let entry = {
            let mut ops = self.ops.borrow_mut();
            let op = ops[key].as_mut().expect("live op");
            entry_for(op).user_data(key as u64)
        };
        let mut ring = self.ring.borrow_mut();
        // SAFETY (both pushes): the entry points into `ops[key].buf`,
        // whose heap block stays put (the Vec is never touched) until its
        // completion is reaped; its fd is kept open by the caller's store
        // handle.
        let pushed = unsafe { ring.submission().push(&entry).is_ok() }
            || (ring.submit().is_ok() && unsafe { ring.submission().push(&entry).is_ok() });
        if pushed {
            self.unsubmitted.set(true);
        }
        pushed
    }

    /// Hand everything queued to the kernel in one system call. Entries
    /// the kernel did not take (a busy completion queue, an error) stay
    /// queued and go with the next flush, which `drain` also does.
    pub fn flush(&self) {
        loop {
            let next = self.waiting.borrow().front().copied();
            match next {
                Some(k) if self.try_push(k) => {
                    self.waiting.borrow_mut().pop_front();
                }
                _ => break,
            }
        }
        if self.unsubmitted.get() {
            let mut ring = self.ring.borrow_mut();
            if let Err(e) = ring.submit() {
                tracing::debug!(error = %e, "io_uring submit");
            }
            let left = !ring.submission().is_empty();
            self.unsubmitted.set(left);
        }
    }

    /// Reap the kernel's completions; operations that finished go to
    /// `out`, the others continue (and are submitted before returning).
    pub fn drain(&self, out: &mut Vec<Done>) {
        loop {
            loop {
                let cqe = self.ring.borrow_mut().completion().next();
                let Some(c) = cqe else { break };
                self.progress(c.user_data() as usize, c.result(), out);
            }
            // Completions that found the queue full wait on the kernel's
            // overflow list without signalling the eventfd again: flush
            // them into the queue and go round (a stall of every command
            // in flight otherwise, seen at 32 sessions x QD64).
            let overflow = self.ring.borrow_mut().submission().cq_overflow();
            if !overflow {
                break;
            }
            let _ = self.ring.borrow_mut().submit();
        }
        self.flush();
    }

    fn progress(&self, key: usize, res: i32, out: &mut Vec<Done>) {
        let mut ops = self.ops.borrow_mut();
        let Some(op) = ops.get_mut(key).and_then(|o| o.as_mut()) else {
            return;
        };
        // The outcome once the operation is over (`None`: it goes on). A
        // read or write of nothing more is end of file: a failure, as EIO.
        let ok = match op.kind {
            Kind::Fsync => Some(MediaResult::from_errno(res.into())),
            Kind::Read | Kind::Write if res < 0 => Some(MediaResult::from_errno(res.into())),
            Kind::Read | Kind::Write if res == 0 => Some(MediaResult::Failed),
            Kind::Read | Kind::Write => {
                op.at += res as usize;
                if op.at < op.len {
                    None
                } else if op.kind == Kind::Write && op.flush {
                    op.kind = Kind::Fsync;
                    None
                } else {
                    Some(MediaResult::Ok)
                }
            }
        };
        match ok {
            None => {
                drop(ops);
                self.push(key);
            }
            Some(result) => {
                let mut op = ops[key].take().expect("live op");
                drop(ops);
                self.free.borrow_mut().push(key);
                self.inflight.set(self.inflight.get() - 1);
                if op.kind == Kind::Read && result == MediaResult::Ok {
                    // SAFETY: the kernel wrote all `len` bytes (`at ==
                    // len`) into the reserved capacity.
                    unsafe { op.buf.set_len(op.len) };
                }
                out.push(Done {
                    tag: op.tag,
                    result: Finished::Native(result),
                    buf: op.buf,
                });
            }
        }
    }
}

/// The kernel request that moves operation `op` on from where it is.
fn entry_for(op: &mut Op) -> squeue::Entry {
    let fd = types::Fd(op.fd);
    let rest = (op.len - op.at.min(op.len)) as u32;
    let off = op.offset + op.at as u64;
    match op.kind {
        // SAFETY (pointer arithmetic): `at < len <= capacity`, so the
        // pointer stays inside the buffer's allocation and `rest` bytes
        // follow it.
        Kind::Read => opcode::Read::new(fd, unsafe { op.buf.as_mut_ptr().add(op.at) }, rest)
            .offset(off)
            .build(),
        Kind::Write => opcode::Write::new(fd, unsafe { op.buf.as_ptr().add(op.at) }, rest)
            .offset(off)
            .build(),
        Kind::Fsync => opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Buffers must outlive the kernel's use of them: wait out whatever
        // is still in flight before they are freed.
        // Requests still waiting for room never reached the kernel.
        let unsent = self.waiting.get_mut().len();
        self.inflight
            .set(self.inflight.get().saturating_sub(unsent));
        let ring = self.ring.get_mut();
        while self.inflight.get() > 0 {
            if ring.submit_and_wait(1).is_err() {
                // Cannot wait: leak the buffers rather than free them early.
                std::mem::forget(std::mem::take(self.ops.get_mut()));
                return;
            }
            let n = ring.completion().count();
            self.inflight.set(self.inflight.get().saturating_sub(n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    /// Wait for the eventfd, then collect what finished.
    fn wait(cq: &CompletionQueue, u: &Uring, out: &mut Vec<Done>) {
        cq.wait(5000);
        cq.clear();
        u.drain(out);
    }

    fn file(name: &str, fill: &[u8]) -> (std::path::PathBuf, std::fs::File) {
        let p = std::env::temp_dir().join(format!("rtgt-uring-{name}-{}", std::process::id()));
        let mut f = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all(fill).unwrap();
        (p, f)
    }

    /// Far more operations in flight than the completion queue holds: the
    /// overflowed completions must still arrive (they once stalled).
    #[test]
    fn completions_beyond_the_queue_size_arrive() {
        let cq = CompletionQueue::new().unwrap();
        let Ok(u) = Uring::with_sizes(&cq, 8, 16) else {
            eprintln!("skipped: io_uring unavailable");
            return;
        };
        let (p, f) = file("ovf", &[3u8; 8192]);
        for i in 0..200u32 {
            let op = SimpleIo::Read {
                offset: (i as u64 % 16) * 512,
                len: 512,
            };
            u.submit(i, f.as_raw_fd(), op, Vec::new());
        }
        u.flush();
        let mut out = Vec::new();
        for _ in 0..1000 {
            if out.len() == 200 {
                break;
            }
            wait(&cq, &u, &mut out);
        }
        assert_eq!(out.len(), 200, "completions lost");
        for d in &out {
            assert!(matches!(d.result, Finished::Native(MediaResult::Ok)));
            assert!(d.buf.len() == 512 && d.buf.iter().all(|&x| x == 3));
        }
        assert_eq!(u.inflight(), 0);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_write_flush_through_the_ring() {
        let cq = CompletionQueue::new().unwrap();
        let Ok(u) = Uring::new(&cq) else {
            eprintln!("skipped: io_uring unavailable");
            return;
        };
        let (p, f) = file("rw", &[0u8; 65536]);
        let fd = f.as_raw_fd();
        let mut out = Vec::new();
        let mut one = |op: SimpleIo, buf: Vec<u8>| {
            u.submit(1, fd, op, buf);
            u.flush();
            out.clear();
            while out.is_empty() {
                wait(&cq, &u, &mut out);
            }
            let d = out.pop().unwrap();
            (matches!(d.result, Finished::Native(MediaResult::Ok)), d.buf)
        };
        let w = SimpleIo::Write {
            offset: 4096,
            len: 8192,
            flush: true,
        };
        assert!(one(w, vec![7u8; 8192]).0);
        // A read into a buffer with stale contents and no length: it gets
        // exactly what the file holds.
        let (ok, back) = one(
            SimpleIo::Read {
                offset: 4096,
                len: 8192,
            },
            vec![9u8; 100],
        );
        assert!(ok);
        assert_eq!(back.len(), 8192);
        assert!(back.iter().all(|&b| b == 7));
        let mut check = [0u8; 4];
        f.read_exact_at(&mut check, 4096 + 8190).unwrap();
        assert_eq!(check, [7, 7, 0, 0]);
        // Reading past the end is a failure, not zeros.
        let (ok, _) = one(
            SimpleIo::Read {
                offset: 65536 - 10,
                len: 4096,
            },
            back,
        );
        assert!(!ok);
        assert!(one(SimpleIo::Flush, Vec::new()).0);
        assert_eq!(u.inflight(), 0);
        std::fs::remove_file(p).unwrap();
    }

    /// The kernel's error reaches the SCSI answer: a store out of space
    /// (ENOSPC, as /dev/full answers every write) is DATA PROTECT / SPACE
    /// ALLOCATION FAILED, not a medium error.
    #[test]
    fn the_kernels_error_comes_through() {
        let cq = CompletionQueue::new().unwrap();
        let Ok(u) = Uring::new(&cq) else {
            eprintln!("skipped: io_uring unavailable");
            return;
        };
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let w = SimpleIo::Write {
            offset: 0,
            len: 4096,
            flush: false,
        };
        u.submit(1, full.as_raw_fd(), w, vec![1u8; 4096]);
        u.flush();
        let mut out = Vec::new();
        while out.is_empty() {
            wait(&cq, &u, &mut out);
        }
        assert!(matches!(
            out[0].result,
            Finished::Native(MediaResult::NoSpace)
        ));
    }
}
