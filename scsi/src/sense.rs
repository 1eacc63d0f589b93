//! Sense data (SPC-4 §4.5): named sense keys and additional sense codes, and
//! the two wire formats (fixed 0x70, descriptor 0x72).

/// Sense keys (SPC-4 table 27).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const MISCOMPARE: u8 = 0xe;
}

/// An additional sense code and qualifier pair (SPC-4 table 28).
pub type Asc = (u8, u8);

pub mod asc {
    use super::Asc;
    pub const NO_ADDITIONAL_SENSE: Asc = (0x00, 0x00);
    pub const LUN_BECOMING_READY: Asc = (0x04, 0x01);
    /// SBC-4 §4.11: NOT READY while a SANITIZE runs.
    pub const SANITIZE_IN_PROGRESS: Asc = (0x04, 0x1b);
    /// SBC-4 §4.11.4: MEDIUM ERROR until EXIT FAILURE MODE.
    pub const SANITIZE_COMMAND_FAILED: Asc = (0x31, 0x03);
    pub const WRITE_ERROR: Asc = (0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: Asc = (0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = (0x1a, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = (0x1d, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = (0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = (0x26, 0x00);
    /// SPC-4 §5.13.11.2: RELEASE of a persistent reservation with the wrong type.
    pub const INVALID_RELEASE_OF_PR: Asc = (0x26, 0x04);
    pub const WRITE_PROTECTED: Asc = (0x27, 0x00);
    pub const SOFTWARE_WRITE_PROTECTED: Asc = (0x27, 0x02);
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Asc = (0x27, 0x07);
    pub const POWER_ON_RESET: Asc = (0x29, 0x00);
    pub const BUS_DEVICE_RESET_FUNCTION: Asc = (0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: Asc = (0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = (0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = (0x2a, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = (0x2a, 0x06);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = (0x2a, 0x09);
    /// SBC-4 §4.7.3.8.3: a soft threshold of a thin LU was crossed.
    pub const THIN_PROVISIONING_SOFT_THRESHOLD_REACHED: Asc = (0x38, 0x07);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = (0x39, 0x00);
    pub const MEDIUM_NOT_PRESENT: Asc = (0x3a, 0x00);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = (0x3f, 0x0e);
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = (0x53, 0x02);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = (0x55, 0x04);
    pub const INTERNAL_TARGET_FAILURE: Asc = (0x44, 0x00);
}

/// Sense-key specific field pointer (SPC-4 §4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// true: the error is in the CDB; false: in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

impl FieldPointer {
    fn bytes(&self) -> [u8; 3] {
        let mut b0 = 0x80; // SKSV
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

/// One sense condition, not yet formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: Asc,
    /// INFORMATION field (e.g. miscompare offset), if valid.
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// Whether sense data is written fixed (0x70) or descriptor (0x72) format;
/// the control mode page's D_SENSE bit chooses (SPC-4 §7.5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenseFormat {
    #[default]
    Fixed,
    Descriptor,
}

impl Sense {
    pub const fn new(key: u8, asc: Asc) -> Sense {
        Sense {
            key,
            asc,
            info: None,
            field: None,
        }
    }
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: key::ILLEGAL_REQUEST,
            asc: asc::INVALID_FIELD_IN_CDB,
            info: None,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST pointing at `byte`.
    pub const fn invalid_param(byte: u16) -> Sense {
        Sense {
            key: key::ILLEGAL_REQUEST,
            asc: asc::INVALID_FIELD_IN_PARAMETER_LIST,
            info: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit: None,
            }),
        }
    }
    pub const fn illegal(asc: Asc) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, asc)
    }
    pub const fn lba_out_of_range() -> Sense {
        Sense::illegal(asc::LBA_OUT_OF_RANGE)
    }
    pub const fn invalid_opcode() -> Sense {
        Sense::invalid_cdb(0, None).with_asc(asc::INVALID_COMMAND_OPERATION_CODE)
    }
    pub const fn unit_attention(asc: Asc) -> Sense {
        Sense::new(key::UNIT_ATTENTION, asc)
    }
    const fn with_asc(mut self, asc: Asc) -> Sense {
        self.asc = asc;
        self
    }
    pub fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// Encode in the requested format.
    pub fn to_bytes(&self, format: SenseFormat) -> Vec<u8> {
        match format {
            SenseFormat::Fixed => self.fixed().to_vec(),
            SenseFormat::Descriptor => self.descriptor(),
        }
    }

    /// Fixed format (SPC-4 §4.5.3): 18 bytes.
    fn fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        if let Some(info) = self.info.and_then(|i| u32::try_from(i).ok()) {
            s[0] |= 0x80; // VALID: the INFORMATION field holds `info`
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[7] = 10;
        s[12] = self.asc.0;
        s[13] = self.asc.1;
        if let Some(f) = self.field {
            s[15..18].copy_from_slice(&f.bytes());
        }
        s
    }

    /// Descriptor format (SPC-4 §4.5.2) with information and sense-key
    /// specific descriptors where they apply.
    fn descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key & 0x0f, self.asc.0, self.asc.1, 0, 0, 0, 0];
        if let Some(info) = self.info {
            s.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(f) = self.field {
            s.extend_from_slice(&[0x02, 0x06, 0, 0]);
            s.extend_from_slice(&f.bytes());
            s.push(0);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layout() {
        let s = Sense::invalid_cdb(1, Some(7)).to_bytes(SenseFormat::Fixed);
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], key::ILLEGAL_REQUEST);
        assert_eq!((s[12], s[13]), asc::INVALID_FIELD_IN_CDB);
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 7, 0, 1]);
    }

    #[test]
    fn fixed_info() {
        let s = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
            .with_info(513)
            .to_bytes(SenseFormat::Fixed);
        assert_eq!(s[0], 0xf0);
        assert_eq!(&s[3..7], &513u32.to_be_bytes());
        let big = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
            .with_info(1 << 40)
            .to_bytes(SenseFormat::Fixed);
        assert_eq!(big[0], 0x70);
    }

    #[test]
    fn descriptor_layout() {
        let s = Sense::invalid_cdb(2, None)
            .with_info(9)
            .to_bytes(SenseFormat::Descriptor);
        assert_eq!(&s[..4], &[0x72, 5, 0x24, 0]);
        assert_eq!(s[7] as usize, s.len() - 8);
        assert_eq!(&s[8..12], &[0, 0x0a, 0x80, 0]);
        assert_eq!(&s[12..20], &9u64.to_be_bytes());
        assert_eq!(&s[20..24], &[2, 6, 0, 0]);
        assert_eq!(&s[24..27], &[0xc0, 0, 2]);
    }
}
