//! The commands each kind of LU supports, with the CDB usage data that
//! REPORT SUPPORTED OPERATION CODES returns (SPC-4 §6.35). One table drives
//! both dispatch and that report, so they cannot disagree.

use crate::cdb::{op, sa};
use crate::config::{DeviceType, LunConfig};

/// Which module runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handler {
    Spc,
    Inquiry,
    Mode,
    Sbc,
    /// Persistent reservations (SPC-4 §6.15, §6.16).
    Pr,
}

/// Who supports a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Every LU, the controller included.
    All,
    /// Disks only.
    Disk,
    /// Thin-provisioned disks only (LBPU / LBPWS).
    Thin,
    /// LUs with asymmetric access (`LunConfig::alua`).
    Alua,
}

#[derive(Debug)]
pub(crate) struct CommandInfo {
    pub opcode: u8,
    /// Service action, for the opcodes that have them.
    pub sa: Option<u16>,
    /// CDB usage data: byte 0 is the opcode, then a mask of the bits the
    /// device server looks at; its length is the CDB length.
    pub usage: &'static [u8],
    pub handler: Handler,
    scope: Scope,
}

const fn c(
    opcode: u8,
    sa: Option<u16>,
    usage: &'static [u8],
    handler: Handler,
    scope: Scope,
) -> CommandInfo {
    CommandInfo {
        opcode,
        sa,
        usage,
        handler,
        scope,
    }
}

use Handler::{Inquiry, Mode, Pr, Sbc, Spc};
use Scope::{All, Alua, Disk, Thin};

const FF: u8 = 0xff;

static COMMANDS: &[CommandInfo] = &[
    c(
        op::TEST_UNIT_READY,
        None,
        &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0],
        Spc,
        All,
    ),
    c(
        op::REQUEST_SENSE,
        None,
        &[op::REQUEST_SENSE, 0x01, 0, 0, FF, 0],
        Spc,
        All,
    ),
    c(
        op::READ_6,
        None,
        &[op::READ_6, 0x1f, FF, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_6,
        None,
        &[op::WRITE_6, 0x1f, FF, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::INQUIRY,
        None,
        &[op::INQUIRY, 0x01, FF, FF, FF, 0],
        Inquiry,
        All,
    ),
    c(
        op::MODE_SELECT_6,
        None,
        &[op::MODE_SELECT_6, 0x11, 0, 0, FF, 0],
        Mode,
        Disk,
    ),
    c(
        op::RESERVE_6,
        None,
        &[op::RESERVE_6, 0, 0, 0, 0, 0],
        Spc,
        All,
    ),
    c(
        op::RELEASE_6,
        None,
        &[op::RELEASE_6, 0, 0, 0, 0, 0],
        Spc,
        All,
    ),
    c(
        op::MODE_SENSE_6,
        None,
        &[op::MODE_SENSE_6, 0x08, FF, FF, FF, 0],
        Mode,
        Disk,
    ),
    c(
        op::START_STOP_UNIT,
        None,
        &[op::START_STOP_UNIT, 0x01, 0, 0x0f, 0xf3, 0],
        Spc,
        Disk,
    ),
    c(
        op::PREVENT_ALLOW,
        None,
        &[op::PREVENT_ALLOW, 0, 0, 0, 0x03, 0],
        Spc,
        Disk,
    ),
    c(
        op::READ_CAPACITY_10,
        None,
        &[op::READ_CAPACITY_10, 0, FF, FF, FF, FF, 0, 0, 0x01, 0],
        Sbc,
        Disk,
    ),
    c(
        op::READ_10,
        None,
        &[op::READ_10, 0xf8, FF, FF, FF, FF, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_10,
        None,
        &[op::WRITE_10, 0xf8, FF, FF, FF, FF, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_AND_VERIFY_10,
        None,
        &[op::WRITE_AND_VERIFY_10, 0xf2, FF, FF, FF, FF, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::VERIFY_10,
        None,
        &[op::VERIFY_10, 0xf6, FF, FF, FF, FF, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::PRE_FETCH_10,
        None,
        &[op::PRE_FETCH_10, 0x02, FF, FF, FF, FF, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::READ_DEFECT_DATA_10,
        None,
        &[op::READ_DEFECT_DATA_10, 0, 0x1f, 0, 0, 0, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::SYNCHRONIZE_CACHE_10,
        None,
        &[op::SYNCHRONIZE_CACHE_10, 0x02, FF, FF, FF, FF, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_SAME_10,
        None,
        &[op::WRITE_SAME_10, 0xe8, FF, FF, FF, FF, 0, FF, FF, 0],
        Sbc,
        Disk,
    ),
    c(
        op::UNMAP,
        None,
        &[op::UNMAP, 0x01, 0, 0, 0, 0, 0, FF, FF, 0],
        Sbc,
        Thin,
    ),
    c(
        op::PERSISTENT_RESERVE_IN,
        Some(0x00),
        &[op::PERSISTENT_RESERVE_IN, 0x00, 0, 0, 0, 0, 0, FF, FF, 0],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_IN,
        Some(0x01),
        &[op::PERSISTENT_RESERVE_IN, 0x01, 0, 0, 0, 0, 0, FF, FF, 0],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_IN,
        Some(0x02),
        &[op::PERSISTENT_RESERVE_IN, 0x02, 0, 0, 0, 0, 0, FF, FF, 0],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_IN,
        Some(0x03),
        &[op::PERSISTENT_RESERVE_IN, 0x03, 0, 0, 0, 0, 0, FF, FF, 0],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_OUT,
        Some(0x00),
        &[
            op::PERSISTENT_RESERVE_OUT,
            0x00,
            FF,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
        ],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_OUT,
        Some(0x01),
        &[
            op::PERSISTENT_RESERVE_OUT,
            0x01,
            FF,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
        ],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_OUT,
        Some(0x02),
        &[
            op::PERSISTENT_RESERVE_OUT,
            0x02,
            FF,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
        ],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_OUT,
        Some(0x03),
        &[
            op::PERSISTENT_RESERVE_OUT,
            0x03,
            FF,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
        ],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_OUT,
        Some(0x04),
        &[
            op::PERSISTENT_RESERVE_OUT,
            0x04,
            FF,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
        ],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_OUT,
        Some(0x05),
        &[
            op::PERSISTENT_RESERVE_OUT,
            0x05,
            FF,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
        ],
        Pr,
        All,
    ),
    c(
        op::PERSISTENT_RESERVE_OUT,
        Some(0x06),
        &[
            op::PERSISTENT_RESERVE_OUT,
            0x06,
            FF,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
        ],
        Pr,
        All,
    ),
    c(
        op::MODE_SELECT_10,
        None,
        &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, FF, FF, 0],
        Mode,
        Disk,
    ),
    c(
        op::RESERVE_10,
        None,
        &[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Spc,
        All,
    ),
    c(
        op::RELEASE_10,
        None,
        &[op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Spc,
        All,
    ),
    c(
        op::MODE_SENSE_10,
        None,
        &[op::MODE_SENSE_10, 0x18, FF, FF, 0, 0, 0, FF, FF, 0],
        Mode,
        Disk,
    ),
    c(
        op::READ_16,
        None,
        &[
            op::READ_16,
            0xf8,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::COMPARE_AND_WRITE,
        None,
        &[
            op::COMPARE_AND_WRITE,
            0xf8,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
            0,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_16,
        None,
        &[
            op::WRITE_16,
            0xf8,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::ORWRITE_16,
        None,
        &[
            op::ORWRITE_16,
            0xf8,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_AND_VERIFY_16,
        None,
        &[
            op::WRITE_AND_VERIFY_16,
            0xf2,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::VERIFY_16,
        None,
        &[
            op::VERIFY_16,
            0xf6,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::PRE_FETCH_16,
        None,
        &[
            op::PRE_FETCH_16,
            0x02,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::SYNCHRONIZE_CACHE_16,
        None,
        &[
            op::SYNCHRONIZE_CACHE_16,
            0x02,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_SAME_16,
        None,
        &[
            op::WRITE_SAME_16,
            0xe9,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_ATOMIC_16,
        None,
        &[
            op::WRITE_ATOMIC_16,
            0xf8,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0x3f,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::SERVICE_ACTION_IN_16,
        Some(sa::READ_CAPACITY_16),
        &[
            op::SERVICE_ACTION_IN_16,
            0x10,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::SERVICE_ACTION_IN_16,
        Some(sa::GET_LBA_STATUS),
        &[
            op::SERVICE_ACTION_IN_16,
            0x12,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::REPORT_LUNS,
        None,
        &[op::REPORT_LUNS, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        Spc,
        All,
    ),
    c(
        op::MAINTENANCE_IN,
        Some(sa::REPORT_SUPPORTED_OPCODES),
        &[
            op::MAINTENANCE_IN,
            0x0c,
            0x87,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Spc,
        All,
    ),
    c(
        op::MAINTENANCE_IN,
        Some(sa::REPORT_TARGET_PORT_GROUPS),
        &[op::MAINTENANCE_IN, 0xea, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        Spc,
        Alua,
    ),
    c(
        op::MAINTENANCE_OUT,
        Some(sa::SET_TARGET_PORT_GROUPS),
        &[op::MAINTENANCE_OUT, 0x0a, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        Spc,
        Alua,
    ),
    c(
        op::MAINTENANCE_IN,
        Some(sa::REPORT_SUPPORTED_TMFS),
        &[
            op::MAINTENANCE_IN,
            0x0d,
            0x80,
            0,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Spc,
        All,
    ),
    c(
        op::READ_12,
        None,
        &[op::READ_12, 0xf8, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_12,
        None,
        &[op::WRITE_12, 0xf8, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Sbc,
        Disk,
    ),
    c(
        op::WRITE_AND_VERIFY_12,
        None,
        &[
            op::WRITE_AND_VERIFY_12,
            0xf2,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
    c(
        op::VERIFY_12,
        None,
        &[op::VERIFY_12, 0xf6, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Sbc,
        Disk,
    ),
    c(
        op::READ_DEFECT_DATA_12,
        None,
        &[
            op::READ_DEFECT_DATA_12,
            0x1f,
            0,
            0,
            0,
            0,
            FF,
            FF,
            FF,
            FF,
            0,
            0,
        ],
        Sbc,
        Disk,
    ),
];

fn in_scope(cfg: &LunConfig, scope: Scope) -> bool {
    match scope {
        All => true,
        Disk => cfg.device_type == DeviceType::Disk,
        Thin => cfg.device_type == DeviceType::Disk && cfg.thin,
        Alua => cfg.alua,
    }
}

/// The commands `cfg`'s LU supports, in table order.
pub(crate) fn supported(cfg: &LunConfig) -> impl Iterator<Item = &'static CommandInfo> + '_ {
    COMMANDS.iter().filter(move |c| in_scope(cfg, c.scope))
}

/// Whether `opcode` has service actions at all (for REPORT SUPPORTED
/// OPERATION CODES reporting options 1 and 2).
pub(crate) fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.sa.is_some())
}

/// Whether `cfg`'s LU supports `opcode` with at least one service action
/// (so an unknown service action is an invalid field, not an invalid opcode).
pub(crate) fn supports_opcode(cfg: &LunConfig, opcode: u8) -> bool {
    supported(cfg).any(|c| c.opcode == opcode)
}

/// Find the entry for a CDB; `sa` is consulted only for opcodes with
/// service actions.
pub(crate) fn lookup(cfg: &LunConfig, opcode: u8, sa: u16) -> Option<&'static CommandInfo> {
    supported(cfg).find(|c| c.opcode == opcode && c.sa.is_none_or(|s| s == sa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::group_length;

    #[test]
    fn usage_lengths_match_groups() {
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.opcode);
            assert_eq!(
                Some(c.usage.len()),
                group_length(c.opcode),
                "{:#x}",
                c.opcode
            );
            if let Some(sa) = c.sa {
                assert_eq!(u16::from(c.usage[1] & 0x1f), sa);
            }
        }
    }
}
