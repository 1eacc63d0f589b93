//! CDB builders for the few commands the helpers and the load generator use
//! (SPC-4, SBC-3). All return a fixed-size array so no allocation happens.

/// TEST UNIT READY (SPC-4 §6.37).
pub fn test_unit_ready() -> [u8; 6] {
    [0; 6]
}

/// Standard INQUIRY, or a VPD page when `vpd` is `Some` (SPC-4 §6.6).
pub fn inquiry(vpd: Option<u8>, alloc_len: u16) -> [u8; 6] {
    let [hi, lo] = alloc_len.to_be_bytes();
    match vpd {
        None => [0x12, 0, 0, hi, lo, 0],
        Some(page) => [0x12, 1, page, hi, lo, 0],
    }
}

/// READ CAPACITY (16) (SBC-3 §5.16): SERVICE ACTION IN (16), action 0x10.
pub fn read_capacity16(alloc_len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc_len.to_be_bytes());
    c
}

/// READ (16) (SBC-3 §5.8).
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x88, lba, blocks)
}

/// WRITE (16) (SBC-3 §5.40).
pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x8a, lba, blocks)
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// SYNCHRONIZE CACHE (10) of the whole medium (SBC-3 §5.22).
pub fn sync_cache10() -> [u8; 10] {
    [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// REQUEST SENSE (SPC-4 §6.29).
pub fn request_sense(alloc_len: u8) -> [u8; 6] {
    [0x03, 0, 0, 0, alloc_len, 0]
}

/// Encode a LUN number into the 8-byte iSCSI LUN field (SAM-5 §4.7):
/// peripheral device addressing below 256, flat space addressing up to 16383.
/// Larger values are taken to be already encoded.
pub fn lun_to_raw(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else if lun < 0x4000 {
        (0x4000 | lun) << 48
    } else {
        lun
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding() {
        assert_eq!(lun_to_raw(1).to_be_bytes(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            lun_to_raw(300).to_be_bytes(),
            [0x41, 0x2c, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn rw_cdb() {
        let c = write16(0x0102, 8);
        assert_eq!(c[0], 0x8a);
        assert_eq!(&c[2..10], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&c[10..14], &[0, 0, 0, 8]);
    }
}
