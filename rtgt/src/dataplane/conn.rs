//! The driver of one connection on its target's loop. Everything RFC 7143
//! says about the full feature phase lives in [`iscsi::session::Session`];
//! this only moves bytes: socket reads into the session, its PDUs out with
//! one `writev` per batch, its SCSI commands to the LUNs and their results
//! back, and its timer.

use std::cell::{Cell, RefCell};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use iscsi::digest::{crc32c, crc32c_append};
use iscsi::pdu::BHS_LEN;
use iscsi::session::{self as proto, Close, ConnId, Reset, SessionHost, Transmit};
use iscsi::transfer::BurstLimits;
use iscsi::Digests;
use scsi::LunId;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::session::Session;
use super::TargetCtx;
use crate::stats::Counters;

/// Negotiated values of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnParams {
    pub digests: Digests,
    /// Largest data segment we accept (our MaxRecvDataSegmentLength).
    pub max_recv: u32,
    /// Largest data segment we may send (the initiator's).
    pub max_xmit: u32,
    pub limits: BurstLimits,
}

/// Most bytes of reads in flight on one connection: reads pin their
/// buffers until answered (a hostile initiator could otherwise queue
/// 128 x 32 MiB reads).
pub const IO_BUDGET: u64 = 4 * scsi::MAX_TRANSFER_BYTES;

/// What the loop keeps of a connection besides its socket: how to wake
/// its driver, and its counters.
pub struct ConnHandle {
    pub id: ConnId,
    pub cid: u16,
    pub peer: SocketAddr,
    wake: Notify,
    /// This connection's and its session's counters (`tgtadm --op stat`).
    pub stats: (Arc<Counters>, Arc<Counters>),
    /// Bytes of reads in flight (see [`IO_BUDGET`]).
    pub read_inflight: Rc<Cell<u64>>,
}

impl ConnHandle {
    pub fn new(
        id: ConnId,
        cid: u16,
        peer: SocketAddr,
        stats: (Arc<Counters>, Arc<Counters>),
    ) -> ConnHandle {
        ConnHandle {
            id,
            cid,
            peer,
            wake: Notify::new(),
            stats,
            read_inflight: Rc::new(Cell::new(0)),
        }
    }

    /// Something new to send, or the connection should close.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What the session asks of the target: LUNs, the listing for Text, and
/// resets that reach beyond the session.
pub struct Host<'a> {
    pub target: &'a TargetCtx,
    pub session: &'a Session,
    pub local: SocketAddr,
}

impl SessionHost for Host<'_> {
    fn lun_exists(&mut self, lun: u64) -> bool {
        self.target
            .shared
            .luns_shared()
            .config(LunId(lun))
            .is_some()
    }

    fn targets(&mut self) -> Vec<iscsi::TargetEntry> {
        self.target.shared.listing(self.local)
    }

    fn reset(&mut self, what: Reset) {
        let nexus = self.session.setup.nexus;
        let tsih = Some(self.session.setup.tsih);
        let shared = &self.target.shared;
        let changes = match what {
            Reset::Lun(l) => {
                self.target.abort_everywhere(Some(LunId(l)), tsih);
                let mut luns = shared.luns();
                luns.lun_reset(LunId(l), nexus);
                luns.take_shared_changes()
            }
            Reset::Target | Reset::TargetCold => {
                self.target.abort_everywhere(None, tsih);
                let mut luns = shared.luns();
                luns.target_reset(nexus);
                luns.take_shared_changes()
            }
        };
        if what == Reset::TargetCold {
            // Every other session of the target ends now; this one once
            // its response is out. Initiators log in again and find
            // POWER ON, RESET, OR BUS DEVICE RESET OCCURRED on their new
            // nexuses, as after a power cycle.
            self.target.close_everywhere(tsih);
        }
        // The TMF response waits for them (see `Session::holds`).
        let done = shared.apply_shared_changes(changes);
        self.session.holds.borrow_mut().extend(done);
    }
}

const PAD: [u8; 3] = [0; 3];
/// Most PDUs gathered into one writev.
const BATCH: usize = 64;

/// PDUs taken from the session and written with one `writev`: headers
/// and trailers laid out in a small arena, data straight from the
/// session's buffers. A batch only leaves when wholly written.
struct Outbox {
    batch: Vec<Transmit>,
    /// Per PDU: header range in the arena, data length, trailer range.
    parts: Vec<(Range<usize>, usize, Range<usize>)>,
    arena: Vec<u8>,
    /// Bytes of the batch already written.
    done: usize,
    total: usize,
    digests: Digests,
}

enum Flushed {
    /// Nothing left to send.
    Empty,
    /// The socket is full: wait until it is writable.
    Blocked,
}

impl Outbox {
    fn new(digests: Digests) -> Outbox {
        Outbox {
            batch: Vec::with_capacity(BATCH),
            parts: Vec::with_capacity(BATCH),
            arena: Vec::with_capacity(BATCH * 56),
            done: 0,
            total: 0,
            digests,
        }
    }

    /// Take up to a batch of PDUs and lay out their headers and trailers.
    fn fill(&mut self, m: &mut proto::Session, id: ConnId) {
        self.arena.clear();
        self.parts.clear();
        self.done = 0;
        self.total = 0;
        while self.batch.len() < BATCH {
            let Some(t) = m.poll_transmit(id) else { break };
            let data = m.payload(&t);
            let h0 = self.arena.len();
            self.arena.extend_from_slice(&t.bhs.0);
            if self.digests.header {
                let c = crc32c(&t.bhs.0);
                self.arena.extend_from_slice(&c.to_le_bytes());
            }
            let h1 = self.arena.len();
            let pad = (4 - data.len() % 4) % 4;
            self.arena.extend_from_slice(&PAD[..pad]);
            if self.digests.data && !data.is_empty() {
                let c = crc32c_append(crc32c(data), &PAD[..pad]);
                self.arena.extend_from_slice(&c.to_le_bytes());
            }
            self.total += self.arena.len() - h0 + data.len();
            self.parts.push((h0..h1, data.len(), h1..self.arena.len()));
            self.batch.push(t);
        }
    }

    /// Write what the session has for this connection until it has
    /// nothing more or the socket is full.
    fn flush(
        &mut self,
        s: &RefCell<proto::Session>,
        id: ConnId,
        stream: &TcpStream,
    ) -> std::io::Result<Flushed> {
        loop {
            if self.batch.is_empty() {
                self.fill(&mut s.borrow_mut(), id);
                if self.batch.is_empty() {
                    return Ok(Flushed::Empty);
                }
            }
            let r = {
                let m = s.borrow();
                let mut slices = [IoSlice::new(&[]); BATCH * 3];
                let mut k = 0;
                for (t, (h, dlen, tr)) in self.batch.iter().zip(self.parts.iter()) {
                    slices[k] = IoSlice::new(&self.arena[h.clone()]);
                    k += 1;
                    if *dlen > 0 {
                        let d = m.payload(t);
                        if d.len() != *dlen {
                            // Its task is gone (never expected: a connection
                            // ends before its tasks do). Stop rather than
                            // send a PDU whose data is not what its header
                            // and digest say.
                            return Err(std::io::Error::other("PDU data went away"));
                        }
                        slices[k] = IoSlice::new(d);
                        k += 1;
                    }
                    if !tr.is_empty() {
                        slices[k] = IoSlice::new(&self.arena[tr.clone()]);
                        k += 1;
                    }
                }
                let mut rest = &mut slices[..k];
                IoSlice::advance_slices(&mut rest, self.done);
                stream.try_write_vectored(rest)
            };
            match r {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.done += n;
                    if self.done >= self.total {
                        let mut m = s.borrow_mut();
                        for t in self.batch.drain(..) {
                            m.release(t);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(Flushed::Blocked)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes taken from the session and not yet written.
    fn unwritten(&self) -> u64 {
        (self.total - self.done.min(self.total)) as u64
    }

    /// Give everything back (the connection is closing).
    fn abandon(&mut self, s: &RefCell<proto::Session>) {
        let mut m = s.borrow_mut();
        for t in self.batch.drain(..) {
            m.release(t);
        }
    }
}

/// Most bytes of PDUs waiting for a peer that does not read them, before
/// the connection stops reading its requests (so what a peer sends can
/// never pin more than this plus what is already in flight).
const TX_BACKLOG: u64 = 8 << 20;

/// Data segments at least this long are read straight into their own
/// buffer (a 256 KiB immediate write, a large Data-Out).
const DIRECT_MIN: usize = 64 * 1024;
/// How much to read into the receive buffer while large PDUs arrive: the
/// next header and the start of its data, the rest then going direct.
const HEADER_READ: usize = 8 * 1024;

/// One PDU whose data segment is read from the socket straight into the
/// buffer that becomes the command's (RFC 7143 framing: header, data,
/// padding to 4 bytes, then the data digest if negotiated).
struct LargeRx {
    /// BHS and header digest (a PDU with an AHS is not read this way).
    header: [u8; BHS_LEN + 4],
    header_len: usize,
    data: Vec<u8>,
    len: usize,
    /// Padding and digest after the data.
    tail: [u8; 7],
    tail_len: usize,
    tail_got: usize,
    data_digest: bool,
    /// Bytes of the receive buffer this PDU took when it started.
    taken: usize,
}

impl LargeRx {
    /// If `buf` starts with the complete header of a PDU with a large data
    /// segment that has not all arrived, take what there is of it.
    fn start(m: &mut proto::Session, buf: &[u8], dg: Digests, max_recv: usize) -> Option<LargeRx> {
        let (bhs, hlen, total) = iscsi::pdu::decode_header(buf, dg, max_recv).ok()??;
        let len = bhs.data_len();
        if len < DIRECT_MIN || buf.len() >= total || bhs.ahs_len() > 0 {
            return None;
        }
        let mut header = [0u8; BHS_LEN + 4];
        header[..hlen].copy_from_slice(&buf[..hlen]);
        let pad = (4 - len % 4) % 4;
        let mut data = m.buffer();
        data.reserve(len);
        let avail = &buf[hlen..];
        let n = avail.len().min(len);
        data.extend_from_slice(&avail[..n]);
        let mut l = LargeRx {
            header,
            header_len: hlen,
            data,
            len,
            tail: [0; 7],
            tail_len: pad + if dg.data { 4 } else { 0 },
            tail_got: 0,
            data_digest: dg.data,
            taken: buf.len(),
        };
        let rest = &avail[n..];
        l.tail[..rest.len()].copy_from_slice(rest);
        l.tail_got = rest.len();
        Some(l)
    }

    fn complete(&self) -> bool {
        self.data.len() == self.len && self.tail_got == self.tail_len
    }

    /// Read what the socket has of this PDU, no further.
    fn read(&mut self, stream: &TcpStream) -> std::io::Result<usize> {
        if self.data.len() < self.len {
            let want = self.len - self.data.len();
            let mut lim = bytes::BufMut::limit(&mut self.data, want);
            return stream.try_read_buf(&mut lim);
        }
        let n = stream.try_read(&mut self.tail[self.tail_got..self.tail_len])?;
        self.tail_got += n;
        Ok(n)
    }

    fn digest_ok(&self) -> bool {
        if !self.data_digest {
            return true;
        }
        let pad = self.tail_len - 4;
        let want = u32::from_le_bytes(self.tail[pad..pad + 4].try_into().unwrap());
        crc32c_append(crc32c(&self.data), &self.tail[..pad]) == want
    }
}

/// Read from the socket into the PDU being received directly, or else
/// into the receive buffer (only a little while large PDUs arrive).
fn read_some(
    stream: &TcpStream,
    rbuf: &mut Vec<u8>,
    large: &mut Option<LargeRx>,
    expect_large: bool,
) -> std::io::Result<usize> {
    match large {
        Some(l) => l.read(stream),
        None if expect_large => {
            let mut lim = bytes::BufMut::limit(rbuf, HEADER_READ);
            stream.try_read_buf(&mut lim)
        }
        None => stream.try_read_buf(rbuf),
    }
}

/// Read, run and answer until the connection ends, then leave the session.
pub async fn run(
    target: Rc<TargetCtx>,
    session: Rc<Session>,
    me: Rc<ConnHandle>,
    stream: TcpStream,
    mut rbuf: Vec<u8>,
    params: ConnParams,
) {
    let digests = params.digests;
    let max_recv = params.max_recv as usize;
    let local = stream.local_addr().unwrap_or(me.peer);
    let mut out = Outbox::new(digests);
    let mut start = 0usize;
    let poll = target.poll;
    let mut last_work = Instant::now();
    // PDUs per read, a moving average in 1/16ths: about one at queue
    // depth 1, many when the initiator keeps a deep queue.
    let mut per_read16: u32 = 16;
    let mut fresh = !rbuf.is_empty();
    // Whether PDUs were handled since the loop last yielded.
    let mut worked = false;
    let timer = tokio::time::sleep(std::time::Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    // A PDU whose large data segment is being read into its own buffer,
    // and whether the initiator sends such PDUs (then reads into the
    // receive buffer stay small, so the next one's data is not copied).
    let mut large: Option<LargeRx> = None;
    let mut expect_large = false;
    // Whether this session's shared SPC-2 reservations were released.
    let mut released = false;
    let why: Option<&'static str> = 'conn: loop {
        if fresh {
            fresh = false;
            let before = session.m.borrow().pdus_received();
            let mut host = Host {
                target: &target,
                session: &session,
                local,
            };
            let was_large = large.is_some();
            let r = match large.as_mut() {
                // A large data segment read straight into its buffer.
                Some(l) if l.complete() => {
                    let l = large.take().expect("checked");
                    let mut m = session.m.borrow_mut();
                    let header = &l.header[..l.header_len];
                    if l.digest_ok() {
                        m.receive_pdu(me.id, header, l.data, &mut host).map(|()| 0)
                    } else {
                        m.data_digest_error(me.id, header, l.data);
                        Ok(0)
                    }
                }
                Some(_) => Ok(0),
                None => session
                    .m
                    .borrow_mut()
                    .receive(me.id, &rbuf[start..], &mut host),
            };
            let got = (session.m.borrow().pdus_received() - before).min(1024) as u32;
            let closing = match r {
                Ok(n) => {
                    start += n;
                    None
                }
                Err(Close::Protocol(why)) => Some(Some(why)),
                Err(Close::Gone) => Some(None),
            };
            target.run_scsi(&session);
            if !released
                && session.conns.borrow().len() <= 1
                && session.m.borrow().is_closing(me.id)
            {
                // The session ends (logout): its SPC-2 reservations on
                // media other gateways share go before the Logout
                // Response does (SPC-2 §5.5.1).
                released = true;
                let owed = target
                    .shared
                    .luns_shared()
                    .spc2_changes_for(session.setup.nexus);
                let done = target.shared.apply_shared_changes(owed);
                session.holds.borrow_mut().extend(done);
            }
            let holds = std::mem::take(&mut *session.holds.borrow_mut());
            for h in holds {
                let _ = h.await;
            }
            session.wake(Some(me.id));
            if let Some(why) = closing {
                // Send the Reject that explains it, if the socket takes it.
                let _ = out.flush(&session.m, me.id, &stream);
                break 'conn why;
            }
            if got > 0 {
                worked = true;
                last_work = Instant::now();
                per_read16 = per_read16 - per_read16 / 8 + got * 2;
            }
            // A large data segment still on its way goes straight into a
            // buffer of its own rather than through the receive buffer
            // (one copy less for every large write).
            if large.is_none() {
                let m = &mut *session.m.borrow_mut();
                large = LargeRx::start(m, &rbuf[start..], digests, max_recv);
                if let Some(l) = &large {
                    start += l.taken;
                    expect_large = true;
                } else if got > 0 && !was_large {
                    // Whole PDUs from the receive buffer: small ones.
                    expect_large = false;
                }
            }
            // Move a partial PDU to the front only when room runs out, so a
            // large PDU arriving in pieces is not shifted on every read.
            if start == rbuf.len() {
                rbuf.clear();
                start = 0;
            } else if start > 0 && rbuf.capacity() - rbuf.len() < 64 * 1024 {
                rbuf.drain(..start);
                start = 0;
            }
            if rbuf.capacity() - rbuf.len() < 64 * 1024 {
                rbuf.reserve(256 * 1024);
            }
        }
        let blocked = match out.flush(&session.m, me.id, &stream) {
            Ok(Flushed::Empty) => false,
            Ok(Flushed::Blocked) => true,
            Err(_) => break None,
        };
        if !blocked && session.m.borrow().is_closing(me.id) {
            break None;
        }
        // Backpressure: while the peer leaves this much unread, take no
        // new requests from it (only its reads of our PDUs make room).
        let backlog = blocked && out.unwritten() + session.m.borrow().tx_bytes(me.id) > TX_BACKLOG;
        if worked {
            // Let the loop's other connections and its completions have a
            // turn before reading again: a busy initiator whose socket is
            // always readable would otherwise keep the loop for a whole
            // scheduling budget (4 sessions at QD32 on one loop: p99 went
            // from ~1 ms to ~4-8 ms, with stalls of ~100 ms).
            worked = false;
            tokio::task::yield_now().await;
        }
        // Adaptive polling: for a bounded time after the last work, look
        // at the socket again instead of sleeping in the kernel, yielding
        // in between so I/O completions run (tokio polls its driver
        // without blocking before resuming a yielded task). Only at low
        // queue depth (about one PDU per read) and with every command
        // answered: then the initiator acts next, and its next command
        // finds the loop awake. At deep queues sleeping lets PDUs gather
        // into large reads and batched writes, and spinning would only
        // take CPU from the initiator or other loops (measured on two
        // shared cores: polling at QD64 cost up to a sixth of the rate).
        // An idle connection stops polling after `poll` and costs nothing.
        if !poll.is_zero()
            && !blocked
            && per_read16 < 2 * 16
            && last_work.elapsed() < poll
            && session.m.borrow().in_flight() == 0
        {
            match read_some(&stream, &mut rbuf, &mut large, expect_large) {
                Ok(0) => break None,
                Ok(_) => {
                    fresh = true;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(_) => break None,
            }
        }
        // One timer for the connection's life, moved only when the
        // session's next deadline moves (not a new timer per wake-up).
        let deadline = session.m.borrow().poll_timeout(me.id);
        if deadline != armed {
            if let Some(d) = deadline {
                timer.as_mut().reset(d.into());
            }
            armed = deadline;
        }
        tokio::select! {
            r = stream.readable(), if !backlog => {
                if r.is_err() {
                    break None;
                }
                match read_some(&stream, &mut rbuf, &mut large, expect_large) {
                    Ok(0) => break None,
                    Ok(_) => fresh = true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break None,
                }
            }
            _ = me.wake.notified() => {}
            r = stream.writable(), if blocked => {
                if r.is_err() {
                    break None;
                }
            }
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                let r = session.m.borrow_mut().handle_timeout(me.id, Instant::now());
                if let Err(c) = r {
                    if let Close::Protocol(why) = c {
                        break Some(why);
                    }
                    break None;
                }
            }
        }
    };
    if let Some(why) = why {
        tracing::info!(peer = %me.peer, cid = me.cid, why, "connection dropped");
    }
    if let Some(l) = large.take() {
        session.m.borrow_mut().give_buf(l.data);
    }
    out.abandon(&session.m);
    let ended = session.m.borrow_mut().remove_conn(me.id);
    drop(stream);
    target.conn_closed(&session, &me, ended);
}
