//! How a finished SCSI command is answered (RFC 7143 §11.4, §11.7): the
//! residual count, and the Data-In sequence a read's data goes out in. Pure
//! functions of the command and the negotiated limits, so the daemon only
//! moves the bytes they point at.

use std::ops::Range;

use crate::pdu::{data_in_header, Bhs, Itt, Residual};

/// What the initiator asked for and what the command produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Expected Data Transfer Length from the SCSI Command PDU.
    pub edtl: u32,
    /// The command's R (read) bit; anything else is answered as a write
    /// or a command without data.
    pub read: bool,
    /// Bytes of Data-In the command will send (already at most `edtl`).
    pub sent: u32,
    /// Bytes the command wanted to move (its CDB's transfer length, or the
    /// full length of the data it could have returned).
    pub wanted: u64,
}

/// The residual to report (RFC 7143 §11.4.5): overflow when the command
/// wanted more than the initiator expected; for a read, underflow by what
/// was not sent; for a write, underflow by what the command did not want.
pub fn residual(t: Transfer) -> Residual {
    let edtl = t.edtl as u64;
    if t.wanted > edtl {
        Residual::Overflow((t.wanted - edtl).min(u32::MAX as u64) as u32)
    } else if t.read {
        if (t.sent as u64) < edtl {
            Residual::Underflow(t.edtl - t.sent)
        } else {
            Residual::None
        }
    } else if t.wanted < edtl {
        Residual::Underflow((edtl - t.wanted) as u32)
    } else {
        Residual::None
    }
}

/// One Data-In PDU: its header and the range of the read buffer it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    pub bhs: Bhs,
    pub data: Range<usize>,
    /// Whether this PDU carries the command's status (and so consumes a
    /// StatSN, RFC 7143 §11.7.4).
    pub has_status: bool,
}

/// The Data-In PDUs of `len` bytes of read data, in order. Each PDU is at
/// most `max_xmit` bytes (the initiator's MaxRecvDataSegmentLength); each
/// sequence ends at a MaxBurstLength boundary with the F bit (§11.7.1);
/// DataSN counts from 0. With `status`, the last PDU carries it (phase
/// collapse, §11.7.3: only allowed without sense data, so the caller passes
/// `None` and sends a SCSI Response when there is sense).
pub fn data_in(
    itt: Itt,
    lun_raw: u64,
    len: usize,
    max_xmit: u32,
    max_burst: u32,
    status: Option<(u8, Residual)>,
) -> impl Iterator<Item = DataIn> {
    let max = max_xmit.max(512) as usize;
    let burst = max_burst.max(512) as usize;
    let mut off = 0usize;
    let mut data_sn = 0u32;
    std::iter::from_fn(move || {
        if off >= len {
            return None;
        }
        let burst_end = (off / burst + 1) * burst;
        let n = (len - off).min(max).min(burst_end - off);
        let last = off + n == len;
        let st = status.filter(|_| last);
        let bhs = data_in_header(
            itt,
            lun_raw,
            data_sn,
            off as u32,
            n,
            last || off + n == burst_end,
            st,
        );
        let d = DataIn {
            bhs,
            data: off..off + n,
            has_status: st.is_some(),
        };
        off += n;
        data_sn += 1;
        Some(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Opcode;

    fn t(edtl: u32, read: bool, sent: u32, wanted: u64) -> Transfer {
        Transfer {
            edtl,
            read,
            sent,
            wanted,
        }
    }

    #[test]
    fn residuals() {
        // A read of 4 blocks into a 1-block buffer: overflow by 3 blocks.
        assert_eq!(residual(t(512, true, 512, 2048)), Residual::Overflow(1536));
        // INQUIRY returning 36 of 255 bytes: underflow by 219.
        assert_eq!(residual(t(255, true, 36, 36)), Residual::Underflow(219));
        assert_eq!(residual(t(4096, true, 4096, 4096)), Residual::None);
        // A read that failed sent nothing: underflow by everything.
        assert_eq!(residual(t(4096, true, 0, 4096)), Residual::Underflow(4096));
        // A write whose CDB wants less than the initiator sends.
        assert_eq!(residual(t(8192, false, 0, 4096)), Residual::Underflow(4096));
        assert_eq!(residual(t(4096, false, 0, 8192)), Residual::Overflow(4096));
        assert_eq!(residual(t(0, false, 0, 0)), Residual::None);
    }

    #[test]
    fn sequences_end_at_burst_boundaries_and_status_collapses() {
        // 20 KiB, PDUs of 8 KiB, bursts of 12 KiB: 8 + 4 | 8 + 0.. | ...
        let pdus: Vec<DataIn> = data_in(
            Itt(9),
            0x0001_0000_0000_0000,
            20 * 1024,
            8192,
            12 * 1024,
            Some((0, Residual::None)),
        )
        .collect();
        let shape: Vec<(Range<usize>, u8, u32, u32)> = pdus
            .iter()
            .map(|p| {
                (
                    p.data.clone(),
                    p.bhs.flags(),
                    p.bhs.data_sn(),
                    p.bhs.buffer_offset(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0..8192, 0x00, 0, 0),
                (8192..12288, 0x80, 1, 8192),
                (12288..20480, 0x81, 2, 12288),
            ]
        );
        assert!(pdus.iter().all(|p| p.bhs.opcode() == Some(Opcode::DataIn)));
        assert!(pdus.iter().all(|p| p.bhs.itt() == Itt(9)));
        assert_eq!(
            pdus.iter().map(|p| p.has_status).collect::<Vec<_>>(),
            vec![false, false, true]
        );
        assert_eq!(pdus[2].bhs.data_len(), 8192);
    }

    #[test]
    fn status_with_residual_or_kept_apart() {
        let last = data_in(
            Itt(1),
            0,
            36,
            8192,
            262144,
            Some((0, Residual::Underflow(219))),
        )
        .last()
        .unwrap();
        // F, S and U bits; the residual count at byte 44.
        assert_eq!(last.bhs.flags(), 0x80 | 0x01 | 0x02);
        assert_eq!(last.bhs.u32_at(44), 219);
        // Without status (sense follows in a SCSI Response): no S bit.
        let last = data_in(Itt(1), 0, 36, 8192, 262144, None).last().unwrap();
        assert_eq!(last.bhs.flags(), 0x80);
        assert!(!last.has_status);
        assert_eq!(data_in(Itt(1), 0, 0, 8192, 8192, None).count(), 0);
    }
}
