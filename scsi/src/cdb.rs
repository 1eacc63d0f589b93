//! CDB decoding: operation codes, the CDB length each group implies, and
//! typed views of the fields the block commands share (SBC-3 §5).
//! Every accessor is bounds-checked: a short CDB reads as zeros, and
//! [`check_length`] rejects short CDBs before any handler runs.

use crate::sense::Sense;

/// Operation codes (SPC-4 annex D, SBC-3 §5).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const SANITIZE: u8 = 0x48;
    pub const UNMAP: u8 = 0x42;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const MAINTENANCE_OUT: u8 = 0xa4;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_AND_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
}

/// Service actions of SERVICE ACTION IN (16) and MAINTENANCE IN.
pub mod sa {
    pub const READ_CAPACITY_16: u16 = 0x10;
    pub const GET_LBA_STATUS: u16 = 0x12;
    pub const REPORT_TARGET_PORT_GROUPS: u16 = 0x0a;
    /// MAINTENANCE OUT's.
    pub const SET_TARGET_PORT_GROUPS: u16 = 0x0a;
    pub const REPORT_SUPPORTED_OPCODES: u16 = 0x0c;
    pub const REPORT_SUPPORTED_TMFS: u16 = 0x0d;
}

/// The CDB length the group code of `opcode` implies (SAM-5 §5.2);
/// `None` for the variable-length and vendor-specific groups.
pub fn group_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Reject a CDB shorter than its group implies, and one with NACA set in
/// its CONTROL byte (we do not support ACA, SAM-5 §5.2 / SPC-4 §4.3.4.4).
pub fn check_length(cdb: &[u8]) -> Result<(), Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let Some(len) = group_length(opcode) else {
        return Err(Sense::invalid_opcode());
    };
    if cdb.len() < len {
        return Err(Sense::invalid_cdb(0, None));
    }
    if cdb[len - 1] & 0x04 != 0 {
        return Err(Sense::invalid_cdb((len - 1) as u16, Some(2)));
    }
    Ok(())
}

pub fn byte(cdb: &[u8], at: usize) -> u8 {
    cdb.get(at).copied().unwrap_or(0)
}

fn be(cdb: &[u8], at: usize, n: usize) -> u64 {
    (at..at + n).fold(0u64, |acc, i| (acc << 8) | u64::from(byte(cdb, i)))
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    be(b, at, 2) as u16
}
pub fn be24(b: &[u8], at: usize) -> u32 {
    be(b, at, 3) as u32
}
pub fn be32(b: &[u8], at: usize) -> u32 {
    be(b, at, 4) as u32
}
pub fn be64(b: &[u8], at: usize) -> u64 {
    be(b, at, 8)
}

/// The service action field (byte 1, bits 4..0) of 0x9e / 0xa3.
pub fn service_action(cdb: &[u8]) -> u16 {
    u16::from(byte(cdb, 1) & 0x1f)
}

/// Logical block address and length fields shared by the block commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaRange {
    pub lba: u64,
    /// Number of logical blocks as the CDB states it (READ/WRITE(6) map 0 to 256).
    pub blocks: u32,
    /// Byte 1 of the CDB (protection and DPO/FUA/BYTCHK/... flags).
    pub flags: u8,
}

/// Decode LBA/length in the layout of the CDB's size (SBC-3 §5):
/// 6: 21-bit LBA in 1..3, length 4; 10: LBA 2..5, length 7..8;
/// 12: LBA 2..5, length 6..9; 16: LBA 2..9, length 10..13.
pub fn lba_range(cdb: &[u8]) -> LbaRange {
    let flags = byte(cdb, 1);
    match group_length(byte(cdb, 0)) {
        Some(6) => {
            let lba = u64::from(be24(cdb, 1) & 0x1f_ffff);
            let n = u32::from(byte(cdb, 4));
            LbaRange {
                lba,
                blocks: if n == 0 { 256 } else { n },
                flags: 0,
            }
        }
        Some(10) => LbaRange {
            lba: u64::from(be32(cdb, 2)),
            blocks: u32::from(be16(cdb, 7)),
            flags,
        },
        Some(12) => LbaRange {
            lba: u64::from(be32(cdb, 2)),
            blocks: be32(cdb, 6),
            flags,
        },
        _ => LbaRange {
            lba: be64(cdb, 2),
            blocks: be32(cdb, 10),
            flags,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(group_length(op::READ_6), Some(6));
        assert_eq!(group_length(op::READ_10), Some(10));
        assert_eq!(group_length(op::READ_12), Some(12));
        assert_eq!(group_length(op::READ_16), Some(16));
        assert_eq!(group_length(0x7f), None);
        assert!(check_length(&[op::READ_10, 0, 0]).is_err());
        assert!(check_length(&[]).is_err());
        assert!(check_length(&[0, 0, 0, 0, 0, 4]).is_err());
        assert!(check_length(&[0, 0, 0, 0, 0, 0]).is_ok());
    }

    #[test]
    fn ranges() {
        let r = lba_range(&[op::READ_6, 0xff, 0x12, 0x34, 0, 0]);
        assert_eq!((r.lba, r.blocks), (0x1f1234, 256));
        let r = lba_range(&[op::READ_10, 0x18, 0, 0, 1, 0, 0, 0, 2, 0]);
        assert_eq!((r.lba, r.blocks, r.flags), (256, 2, 0x18));
        let r = lba_range(&[op::READ_12, 0, 0, 0, 0, 9, 0, 0, 1, 0, 0, 0]);
        assert_eq!((r.lba, r.blocks), (9, 256));
        let mut c = [0u8; 16];
        c[0] = op::READ_16;
        c[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        c[13] = 5;
        let r = lba_range(&c);
        assert_eq!((r.lba, r.blocks), (u64::MAX, 5));
    }
}
