//! The send side of a connection: PDUs are queued by whoever produced them
//! (the reader, an I/O completion, a timer) and one task writes them out.
//! Sequence numbers are stamped here, at send time, so StatSN follows the
//! order of the wire (RFC 7143 §4.2.2.2), and everything ready at once goes
//! out in one `writev`: headers from a small arena, read data straight from
//! the command's buffer without a copy.

use std::cell::RefCell;
use std::io::IoSlice;
use std::ops::Range;
use std::rc::Rc;

use iscsi::digest::{crc32c, crc32c_append};
use iscsi::pdu::{Bhs, Pdu};
use iscsi::{Digests, StatSn};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::session::Session;

/// The data segment of a queued PDU.
pub enum OutData {
    None,
    Owned(Vec<u8>),
    /// A range of a shared buffer (Data-In from a read).
    Shared(Rc<super::pool::Pooled>, Range<usize>),
}

impl OutData {
    fn bytes(&self) -> &[u8] {
        match self {
            OutData::None => &[],
            OutData::Owned(v) => v,
            OutData::Shared(b, r) => &b[r.clone()],
        }
    }
}

/// How a PDU treats StatSN (RFC 7143 §11.7.4, §11.8.3, §11.19.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Carries StatSN and consumes it (responses).
    Advance,
    /// Carries the next StatSN without consuming it (R2T, our NOP-In ping,
    /// Data-In without status).
    Peek,
}

pub struct OutPdu {
    pub bhs: Bhs,
    pub data: OutData,
    pub stamp: Stamp,
}

impl OutPdu {
    pub fn response(p: Pdu) -> OutPdu {
        OutPdu {
            bhs: p.bhs,
            data: if p.data.is_empty() {
                OutData::None
            } else {
                OutData::Owned(p.data)
            },
            stamp: Stamp::Advance,
        }
    }
    pub fn peek(p: Pdu) -> OutPdu {
        OutPdu {
            stamp: Stamp::Peek,
            ..OutPdu::response(p)
        }
    }
}

/// Messages to the writer task.
pub enum WriterMsg {
    Pdu(OutPdu),
    /// Flush what is queued, then close the socket.
    Close,
}

/// Handle used to queue PDUs on a connection.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::UnboundedSender<WriterMsg>,
}

impl Sender {
    pub fn send(&self, pdu: OutPdu) {
        // A closed writer means the connection is gone: dropping is right.
        let _ = self.tx.send(WriterMsg::Pdu(pdu));
    }
    pub fn close(&self) {
        let _ = self.tx.send(WriterMsg::Close);
    }
}

/// State the writer stamps into headers.
pub struct WriterState {
    pub stat_sn: StatSn,
    pub digests: Digests,
}

pub fn channel() -> (Sender, mpsc::UnboundedReceiver<WriterMsg>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Sender { tx }, rx)
}

const PAD: [u8; 3] = [0; 3];
/// Most PDUs gathered into one writev.
const BATCH: usize = 64;

/// Run the writer until the channel closes or a write fails.
pub async fn run(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    state: Rc<RefCell<WriterState>>,
    session: Rc<Session>,
) {
    let mut batch: Vec<OutPdu> = Vec::with_capacity(BATCH);
    let mut arena: Vec<u8> = Vec::with_capacity(BATCH * 56);
    let mut close = false;
    while !close {
        match rx.recv().await {
            Some(WriterMsg::Pdu(p)) => batch.push(p),
            Some(WriterMsg::Close) | None => break,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(WriterMsg::Pdu(p)) => batch.push(p),
                Ok(WriterMsg::Close) => {
                    close = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // Stamp and lay out headers and trailers in the arena; remember where.
        arena.clear();
        let mut parts: Vec<(Range<usize>, usize, Range<usize>)> = Vec::with_capacity(batch.len());
        {
            let mut st = state.borrow_mut();
            let (exp, max) = session.window_numbers();
            for p in batch.iter_mut() {
                p.bhs.set_stat_sn(st.stat_sn);
                p.bhs.set_exp_cmd_sn(exp);
                p.bhs.set_max_cmd_sn(max);
                if p.stamp == Stamp::Advance {
                    st.stat_sn = st.stat_sn.next();
                }
                let data = p.data.bytes();
                p.bhs.set_data_len(data.len());
                let h0 = arena.len();
                arena.extend_from_slice(&p.bhs.0);
                if st.digests.header {
                    let c = crc32c(&p.bhs.0);
                    arena.extend_from_slice(&c.to_le_bytes());
                }
                let h1 = arena.len();
                let pad = (4 - data.len() % 4) % 4;
                arena.extend_from_slice(&PAD[..pad]);
                if st.digests.data && !data.is_empty() {
                    let c = crc32c_append(crc32c(data), &PAD[..pad]);
                    arena.extend_from_slice(&c.to_le_bytes());
                }
                parts.push((h0..h1, data.len(), h1..arena.len()));
            }
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 3);
        for (p, (h, dlen, t)) in batch.iter().zip(parts.iter()) {
            slices.push(IoSlice::new(&arena[h.clone()]));
            if *dlen > 0 {
                slices.push(IoSlice::new(p.data.bytes()));
            }
            if !t.is_empty() {
                slices.push(IoSlice::new(&arena[t.clone()]));
            }
        }
        if write_all_vectored(&mut wr, &mut slices).await.is_err() {
            return;
        }
        drop(slices);
        batch.clear();
    }
    let _ = wr.shutdown().await;
}

async fn write_all_vectored(
    wr: &mut OwnedWriteHalf,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = wr.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
