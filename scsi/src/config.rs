//! Per-LUN configuration, as tgt's `lu_phy_attr` and backing-store options
//! hold it, with tgt 1.0.85's defaults so a disk moved from tgt keeps its
//! identity (INQUIRY vendor/product, unit serial number, designators).

use crate::{LunId, SenseFormat};

/// The kind of logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// Direct-access block device (peripheral device type 0x00, SBC-3).
    Disk,
    /// tgt's LUN 0 "controller": a storage array controller (peripheral
    /// device type 0x0c, SCC-2) with no medium.
    Controller,
}

impl DeviceType {
    /// Peripheral device type (SPC-4 §6.4.2 table 141).
    pub fn peripheral_type(self) -> u8 {
        match self {
            DeviceType::Disk => 0x00,
            DeviceType::Controller => 0x0c,
        }
    }
}

/// One logical unit's settings.
#[derive(Clone, Debug)]
pub struct LunConfig {
    pub device_type: DeviceType,
    /// Logical block length: 512 by default, 4096 allowed (tgt `-y`/`blocksize`).
    pub block_size: u32,
    /// Capacity in bytes; the LU has `size_bytes / block_size` blocks.
    pub size_bytes: u64,
    /// thin_provisioning=1: LBPME, UNMAP, WRITE SAME with UNMAP, VPD B2.
    pub thin: bool,
    /// A soft threshold on a thin LU (SBC-4 §4.7.3.8): percent of its
    /// capacity mapped beyond which every nexus gets THIN PROVISIONING
    /// SOFT THRESHOLD REACHED; 0 for none.
    pub soft_threshold_pct: u8,
    pub readonly: bool,
    pub removable: bool,
    /// Medium present (START STOP UNIT with LOEJ toggles it on removable LUs).
    pub online: bool,
    /// WCE in the caching mode page; off means every write is flushed.
    pub write_cache: bool,
    pub vendor_id: String,
    pub product_id: String,
    pub product_rev: String,
    pub scsi_id: String,
    pub scsi_sn: String,
    pub sense_format: SenseFormat,
    pub rotation_rate: u16,
    pub lbppbe: u8,
    pub la_lba: u64,
    pub optimal_xfer_gran: u32,
    pub optimal_xfer_len: u32,
    /// Backing store path (informational).
    pub path: Option<String>,
    /// Where persistent reservations with APTPL are kept for this LU
    /// (see `aptpl`); `None`: APTPL is refused (PTPL_C 0), unless the
    /// store keeps the state for every gateway.
    pub pr_file: Option<std::path::PathBuf>,
    /// The NAA locally assigned designator's value (VPD 83): tgt's
    /// `(tid << 32) | lun`, or one derived from the medium when it has an
    /// identity of its own (an RBD image served by several gateways).
    pub numeric_id: u64,
    /// Asymmetric logical unit access (SPC-4 §5.15): implicit ALUA in
    /// INQUIRY (TPGS 01b) and REPORT TARGET PORT GROUPS. Set by the LU
    /// state when the store is shared by several gateways (each one a
    /// target port group), whatever the management asked.
    pub alua: bool,
}

impl LunConfig {
    /// A disk LU with the attributes tgt 1.0.85 gives a new LU of target
    /// `tid` (usr/spc.c `spc_lu_init`, usr/sbc.c `sbc_lu_init`): vendor
    /// "IET", product "VIRTUAL-DISK", revision "0001", SCSI id
    /// `"IET     %04x%04x"` of tid and lun, serial `"beaf%d%d"`.
    pub fn tgt_defaults(tid: u32, lun: LunId) -> LunConfig {
        LunConfig {
            device_type: DeviceType::Disk,
            block_size: 512,
            size_bytes: 0,
            thin: false,
            soft_threshold_pct: 0,
            readonly: false,
            removable: false,
            online: true,
            write_cache: true,
            vendor_id: "IET".to_string(),
            product_id: "VIRTUAL-DISK".to_string(),
            product_rev: "0001".to_string(),
            scsi_id: format!("IET     {:04x}{:04x}", tid, lun.0),
            scsi_sn: format!("beaf{}{}", tid, lun.0),
            sense_format: SenseFormat::Fixed,
            rotation_rate: 0,
            lbppbe: 0,
            la_lba: 0,
            optimal_xfer_gran: 0,
            optimal_xfer_len: 0,
            path: None,
            pr_file: None,
            numeric_id: (u64::from(tid) << 32) | (lun.0 & 0xffff_ffff),
            alua: false,
        }
    }

    /// tgt's LUN 0 controller of target `tid` (usr/scc.c: product
    /// "Controller", no medium).
    pub fn tgt_controller(tid: u32) -> LunConfig {
        LunConfig {
            device_type: DeviceType::Controller,
            product_id: "Controller".to_string(),
            ..LunConfig::tgt_defaults(tid, LunId(0))
        }
    }

    /// Logical block length, never zero (a zero in the config reads as 512).
    pub fn bs(&self) -> u64 {
        if self.block_size == 0 {
            512
        } else {
            u64::from(self.block_size)
        }
    }

    /// THRESHOLD EXPONENT of the logical block provisioning VPD page
    /// (SBC-4 §6.6.4): thresholds count sets of 2^exponent blocks, the
    /// smallest such sets that let a 32-bit THRESHOLD COUNT span the LU.
    pub fn threshold_exponent(&self) -> u8 {
        let blocks = self.blocks();
        (0..64u8)
            .find(|&e| blocks >> e <= u64::from(u32::MAX))
            .unwrap_or(63)
    }

    /// The soft threshold in threshold sets (the THRESHOLD COUNT of the
    /// logical block provisioning mode page), `None` without one.
    pub fn soft_threshold_sets(&self) -> Option<u32> {
        if !self.thin || self.soft_threshold_pct == 0 {
            return None;
        }
        let blocks = u128::from(self.blocks()) * u128::from(self.soft_threshold_pct.min(100)) / 100;
        let sets = blocks.div_ceil(1u128 << self.threshold_exponent());
        Some(u32::try_from(sets).unwrap_or(u32::MAX))
    }

    /// The soft threshold in bytes mapped, `None` without one.
    pub fn soft_threshold_bytes(&self) -> Option<u64> {
        let sets = self.soft_threshold_sets()?;
        Some((u64::from(sets) << self.threshold_exponent()).saturating_mul(self.bs()))
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.size_bytes / self.bs()
    }
}

/// The SCSI target port the LUNs are reached through (for VPD 0x83).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPort {
    pub target_name: String,
    pub tpgt: u16,
    pub relative_port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tgt_identity() {
        let c = LunConfig::tgt_defaults(1, LunId(1));
        assert_eq!(c.scsi_id, "IET     00010001");
        assert_eq!(c.scsi_sn, "beaf11");
        let c = LunConfig::tgt_defaults(12, LunId(300));
        assert_eq!(c.scsi_id, "IET     000c012c");
        assert_eq!(c.scsi_sn, "beaf12300");
        let c = LunConfig::tgt_controller(3);
        assert_eq!(c.device_type.peripheral_type(), 0x0c);
        assert_eq!(c.product_id, "Controller");
        assert_eq!(c.blocks(), 0);
    }
}
