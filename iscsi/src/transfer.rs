//! Write data flow of one SCSI command (RFC 7143 §3.2.4.2, §11.7, §11.8):
//! immediate data, unsolicited Data-Out up to FirstBurstLength, then R2Ts of
//! at most MaxBurstLength each with at most MaxOutstandingR2T outstanding.
//! Every Data-Out is checked against what was solicited before its bytes
//! are accepted, so a peer cannot write outside the command's buffer.

use crate::pdu::{Ttt, RESERVED_TAG};

/// The negotiated limits a transfer obeys.
#[derive(Debug, Clone, Copy)]
pub struct BurstLimits {
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    pub max_outstanding_r2t: u32,
}

/// An R2T to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tSpec {
    pub ttt: Ttt,
    pub r2t_sn: u32,
    pub offset: u32,
    pub len: u32,
}

/// Data-Out that breaks the rules; the connection answers with Reject
/// (protocol error) and, at ERL0, drops.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    /// Immediate data larger than allowed or sent when ImmediateData=No.
    #[error("immediate data of {0} bytes not allowed")]
    Immediate(u32),
    /// Data-Out whose TTT names no outstanding R2T.
    #[error("data-out for an unknown transfer tag")]
    UnknownTtt,
    /// Bytes outside the solicited range or the expected length, or out of
    /// order while DataPDUInOrder=Yes.
    #[error("data-out at offset {offset} length {len} outside the allowed range")]
    OutOfRange { offset: u32, len: u32 },
    /// DataSN not the next of its sequence (RFC 7143 §11.7.5): at ERL0 a
    /// missing or repeated Data-Out is a protocol error.
    #[error("data-out DataSN {got}, expected {want}")]
    DataSn { got: u32, want: u32 },
    /// A sequence ended (F bit) before all it had to carry: the unsolicited
    /// burst before min(FirstBurstLength, EDTL), or an R2T's sequence
    /// before its Desired Data Transfer Length (RFC 7143 §13.14, §11.8.4).
    /// Nothing would ever ask for the missing bytes.
    #[error("data-out sequence ended after {got} of {want} bytes")]
    ShortSequence { got: u32, want: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    ttt: Ttt,
    offset: u32,
    len: u32,
    got: u32,
    /// DataSN the next Data-Out of this sequence must carry.
    next_sn: u32,
}

/// State of one command's incoming data.
#[derive(Debug)]
pub struct WriteTransfer {
    edtl: u32,
    limits: BurstLimits,
    received: u32,
    /// Unsolicited bytes so far (immediate included).
    unsolicited: u32,
    unsolicited_open: bool,
    /// DataSN expected next in the unsolicited sequence.
    unsolicited_sn: u32,
    next_solicit: u32,
    r2t_sn: u32,
    outstanding: Vec<Outstanding>,
}

impl WriteTransfer {
    /// Start a write of `edtl` bytes whose command PDU carried `immediate`
    /// bytes and had F = `cmd_final` (no unsolicited Data-Out follows).
    pub fn new(
        edtl: u32,
        immediate: u32,
        cmd_final: bool,
        limits: BurstLimits,
    ) -> Result<Self, TransferError> {
        let first = limits.first_burst.min(edtl);
        if immediate > 0 && (!limits.immediate_data || immediate > first) {
            return Err(TransferError::Immediate(immediate));
        }
        let unsolicited_open = !cmd_final && !limits.initial_r2t && immediate < first;
        Ok(WriteTransfer {
            edtl,
            limits,
            received: immediate,
            unsolicited: immediate,
            unsolicited_open,
            unsolicited_sn: 0,
            next_solicit: 0,
            r2t_sn: 0,
            outstanding: Vec::new(),
        })
        .map(|mut t| {
            t.next_solicit = if t.unsolicited_open { first } else { immediate };
            t
        })
    }

    /// Start a new transfer in place, keeping the outstanding-R2T list's
    /// capacity (a session reuses one per task slot, so a write with R2Ts
    /// allocates nothing in steady state).
    pub fn restart(
        &mut self,
        edtl: u32,
        immediate: u32,
        cmd_final: bool,
        limits: BurstLimits,
    ) -> Result<(), TransferError> {
        let mut outstanding = std::mem::take(&mut self.outstanding);
        outstanding.clear();
        let mut t = WriteTransfer::new(edtl, immediate, cmd_final, limits)?;
        t.outstanding = outstanding;
        *self = t;
        Ok(())
    }

    /// All expected bytes have arrived.
    pub fn complete(&self) -> bool {
        self.received >= self.edtl
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    /// Check a Data-Out PDU; on success its bytes belong at `offset` in the
    /// command buffer. DataSN counts from 0 within each sequence (the
    /// unsolicited burst, or one R2T), and with DataPDUInOrder=Yes offsets
    /// must follow each other (RFC 7143 §11.7.5, §13.18).
    pub fn on_data_out(
        &mut self,
        ttt: Ttt,
        data_sn: u32,
        offset: u32,
        len: u32,
        final_bit: bool,
    ) -> Result<(), TransferError> {
        let end = offset
            .checked_add(len)
            .ok_or(TransferError::OutOfRange { offset, len })?;
        if end > self.edtl {
            return Err(TransferError::OutOfRange { offset, len });
        }
        if ttt.0 == RESERVED_TAG {
            let first = self.limits.first_burst.min(self.edtl);
            if !self.unsolicited_open || end > first || offset != self.unsolicited {
                return Err(TransferError::OutOfRange { offset, len });
            }
            if data_sn != self.unsolicited_sn {
                return Err(TransferError::DataSn {
                    got: data_sn,
                    want: self.unsolicited_sn,
                });
            }
            if final_bit && self.unsolicited + len < first {
                return Err(TransferError::ShortSequence {
                    got: self.unsolicited + len,
                    want: first,
                });
            }
            self.unsolicited_sn += 1;
            self.unsolicited += len;
            self.received += len;
            if final_bit || self.unsolicited >= first {
                self.unsolicited_open = false;
            }
            return Ok(());
        }
        let i = self
            .outstanding
            .iter()
            .position(|o| o.ttt == ttt)
            .ok_or(TransferError::UnknownTtt)?;
        let o = &mut self.outstanding[i];
        if offset != o.offset + o.got || end > o.offset + o.len {
            return Err(TransferError::OutOfRange { offset, len });
        }
        if data_sn != o.next_sn {
            return Err(TransferError::DataSn {
                got: data_sn,
                want: o.next_sn,
            });
        }
        if final_bit && o.got + len < o.len {
            return Err(TransferError::ShortSequence {
                got: o.got + len,
                want: o.len,
            });
        }
        o.next_sn += 1;
        o.got += len;
        self.received += len;
        if final_bit || o.got >= o.len {
            self.outstanding.swap_remove(i);
        }
        Ok(())
    }

    /// R2Ts to send now: as many as the outstanding limit allows once
    /// unsolicited data is done. `alloc` hands out transfer tags.
    pub fn next_r2ts(&mut self, alloc: impl FnMut() -> Ttt) -> Vec<R2tSpec> {
        let mut out = Vec::new();
        self.each_r2t(alloc, |s| out.push(s));
        out
    }

    /// [`next_r2ts`](WriteTransfer::next_r2ts) without allocating: each R2T
    /// goes to `emit`.
    pub fn each_r2t(&mut self, mut alloc: impl FnMut() -> Ttt, mut emit: impl FnMut(R2tSpec)) {
        if self.unsolicited_open {
            return;
        }
        while self.next_solicit < self.edtl
            && (self.outstanding.len() as u32) < self.limits.max_outstanding_r2t.max(1)
        {
            let len = (self.edtl - self.next_solicit).min(self.limits.max_burst.max(512));
            let spec = R2tSpec {
                ttt: alloc(),
                r2t_sn: self.r2t_sn,
                offset: self.next_solicit,
                len,
            };
            self.outstanding.push(Outstanding {
                ttt: spec.ttt,
                offset: spec.offset,
                len,
                got: 0,
                next_sn: 0,
            });
            self.r2t_sn += 1;
            self.next_solicit += len;
            emit(spec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(initial_r2t: bool) -> BurstLimits {
        BurstLimits {
            immediate_data: true,
            initial_r2t,
            first_burst: 65536,
            max_burst: 262144,
            max_outstanding_r2t: 2,
        }
    }

    #[test]
    fn immediate_then_r2ts() {
        let mut t = WriteTransfer::new(1 << 20, 8192, true, limits(true)).unwrap();
        let mut tag = 0;
        let r = t.next_r2ts(|| {
            tag += 1;
            Ttt(tag)
        });
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].offset, r[0].len), (8192, 262144));
        assert_eq!(r[1].offset, 8192 + 262144);
        assert!(t.on_data_out(Ttt(1), 0, 0, 100, false).is_err());
        t.on_data_out(Ttt(1), 0, 8192, 262144, true).unwrap();
        let r = t.next_r2ts(|| Ttt(9));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].r2t_sn, 2);
        assert!(!t.complete());
    }

    #[test]
    fn unsolicited_burst() {
        let mut t = WriteTransfer::new(100_000, 0, false, limits(false)).unwrap();
        assert!(t.next_r2ts(|| Ttt(1)).is_empty());
        t.on_data_out(Ttt(RESERVED_TAG), 0, 0, 65536, true).unwrap();
        assert!(t
            .on_data_out(Ttt(RESERVED_TAG), 1, 65536, 10, true)
            .is_err());
        let r = t.next_r2ts(|| Ttt(5));
        assert_eq!((r[0].offset, r[0].len), (65536, 100_000 - 65536));
        t.on_data_out(Ttt(5), 0, 65536, 100_000 - 65536, true)
            .unwrap();
        assert!(t.complete());
    }

    #[test]
    fn data_sn_and_order_are_checked() {
        let mut t = WriteTransfer::new(2048, 0, true, limits(true)).unwrap();
        t.next_r2ts(|| Ttt(7));
        // a DataSN other than 0 first, then a repeated one, then a gap in offsets
        assert_eq!(
            t.on_data_out(Ttt(7), 27, 0, 512, false),
            Err(TransferError::DataSn { got: 27, want: 0 })
        );
        t.on_data_out(Ttt(7), 0, 0, 512, false).unwrap();
        assert!(t.on_data_out(Ttt(7), 0, 512, 512, false).is_err());
        assert!(t.on_data_out(Ttt(7), 1, 1024, 512, false).is_err());
        t.on_data_out(Ttt(7), 1, 512, 512, false).unwrap();
    }

    /// A sequence that ends early would leave bytes nobody asks for: the
    /// command would wait forever. It is an error instead.
    #[test]
    fn sequences_ending_early_are_errors() {
        // Unsolicited burst ended at 4096 of FirstBurstLength 65536.
        let mut t = WriteTransfer::new(100_000, 0, false, limits(false)).unwrap();
        assert_eq!(
            t.on_data_out(Ttt(RESERVED_TAG), 0, 0, 4096, true),
            Err(TransferError::ShortSequence {
                got: 4096,
                want: 65536
            })
        );
        // An R2T's sequence ended at 512 of 2048.
        let mut t = WriteTransfer::new(2048, 0, true, limits(true)).unwrap();
        t.next_r2ts(|| Ttt(7));
        assert_eq!(
            t.on_data_out(Ttt(7), 0, 0, 512, true),
            Err(TransferError::ShortSequence {
                got: 512,
                want: 2048
            })
        );
        // A write shorter than FirstBurstLength sends it all unsolicited.
        let mut t = WriteTransfer::new(4096, 0, false, limits(false)).unwrap();
        t.on_data_out(Ttt(RESERVED_TAG), 0, 0, 4096, true).unwrap();
        assert!(t.complete());
    }

    #[test]
    fn bad_immediate_and_overflow() {
        let mut l = limits(true);
        l.immediate_data = false;
        assert!(WriteTransfer::new(4096, 512, true, l).is_err());
        let mut t = WriteTransfer::new(4096, 0, true, limits(true)).unwrap();
        let r = t.next_r2ts(|| Ttt(3));
        assert_eq!(r.len(), 1);
        assert!(t.on_data_out(Ttt(3), 0, 4000, 200, true).is_err());
        assert!(t.on_data_out(Ttt(3), 0, u32::MAX, 2, true).is_err());
    }
}
