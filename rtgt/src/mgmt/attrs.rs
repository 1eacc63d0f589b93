//! Changing a target's or a logical unit's attributes (tgtadm's
//! `--op update`, rtgt's `rtgt_*_set_*` JSON-RPC methods): one place for
//! tgt's rules on each attribute.

use super::command::{attach_medium, CoreError, CoreResult, NULL_BS_SIZE};
use super::ipc::TgtadmError;
use super::live::{Effect, Live};
use super::params::key_index;
use super::request::{c_atoi, c_strtoull};
use super::table::{DeviceType, LunSpec, ModePage, TargetState, TargetTable};

/// tgtadm `--mode target --op update --name N --value V`: a session
/// parameter offer, the state, NOP settings or login redirection.
pub fn target_set(
    table: &mut TargetTable,
    live: &mut dyn Live,
    tid: u32,
    name: &str,
    value: &str,
) -> CoreResult {
    let t = table
        .targets
        .get_mut(&tid)
        .ok_or(CoreError::from(TgtadmError::NoTarget))?;
    if name == "state" {
        let s = TargetState::parse(value)
            .ok_or_else(|| CoreError::invalid(format!("bad value {value:?} for {name}")))?;
        t.state = s;
        live.apply(Effect::TargetStateChanged {
            tid,
            ready: s == TargetState::Ready,
        });
        return Ok(());
    }
    // tgt matches these by prefix (strncmp).
    if name.starts_with("Redirect") {
        t.redirect_pg = None;
    }
    if name.starts_with("RedirectAddress") {
        t.redirect.addr = value.chars().take(63).collect();
    } else if name.starts_with("RedirectPort") {
        t.redirect.port = value.chars().take(7).collect();
    } else if name.starts_with("RedirectReason") {
        if value.starts_with("Temporary") {
            t.redirect.temporary = Some(true);
        } else if value.starts_with("Permanent") {
            t.redirect.temporary = Some(false);
        } else {
            return Err(CoreError::invalid(format!(
                "bad value {value:?} for {name}"
            )));
        }
    } else if name.starts_with("RedirectCallback") {
        t.redirect.callback = Some(value.to_string());
    } else if name.starts_with("nop_count") {
        t.nop_count = c_atoi(value);
    } else if name.starts_with("nop_interval") {
        t.nop_interval = c_atoi(value);
    } else {
        let idx =
            key_index(name).ok_or_else(|| CoreError::invalid(format!("no parameter {name}")))?;
        t.params
            .set_text(idx, value)
            .map_err(|_| CoreError::invalid(format!("bad value {value:?} for {name}")))?;
    }
    live.apply(Effect::TargetParamsChanged { tid });
    Ok(())
}

/// Parse a `mode_page=` value as tgt's `add_mode_page`.
fn parse_mode_page(s: &str) -> CoreResult<ModePage> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: &str| c_strtoull(p, 0).0 as i64;
    let pcode = parts.first().map(|p| num(p)).unwrap_or(0) as u8;
    let subpcode = parts.get(1).map(|p| num(p)).unwrap_or(0) as u8;
    let size = parts.get(2).map(|p| num(p)).unwrap_or(0) as u16 as usize;
    if parts.len() < 3 || parts.len() > size + 3 {
        return Err(CoreError::invalid(format!("bad mode_page {s:?}")));
    }
    let mut data = vec![0u8; size];
    for (i, p) in parts[3..].iter().enumerate() {
        data[i] = num(p) as u8;
    }
    Ok(ModePage {
        pcode,
        subpcode,
        data,
    })
}

/// tgtadm `--mode logicalunit --op update --params k=v,...`: every item
/// checked before the unit changes.
pub fn lun_set(
    table: &mut TargetTable,
    live: &mut dyn Live,
    tid: u32,
    lun: u64,
    items: &[(String, String)],
) -> CoreResult {
    let t = table
        .targets
        .get(&tid)
        .ok_or(CoreError::from(TgtadmError::NoTarget))?;
    let old = t
        .luns
        .get(&lun)
        .ok_or(CoreError::from(TgtadmError::NoLun))?;
    let mut spec = old.clone();
    let trunc = |v: &str, n: usize| -> String {
        let mut s = String::new();
        for c in v.chars() {
            if s.len() + c.len_utf8() > n {
                break;
            }
            s.push(c);
        }
        s
    };
    let mut new_path = None;
    let mut disksize = None;
    for (k, v) in items {
        let (k, v) = (k.as_str(), v.as_str());
        match k {
            "scsi_id" => spec.scsi_id = trunc(v, 36),
            "scsi_sn" => spec.scsi_sn = trunc(v, 36),
            "vendor_id" => spec.vendor_id = trunc(v, 8),
            "product_id" => spec.product_id = trunc(v, 16),
            "product_rev" => spec.product_rev = trunc(v, 4),
            "sense_format" => spec.sense_format = c_atoi(v) != 0,
            "lbppbe" => {
                spec.lbppbe = c_atoi(v) as u8;
                spec.no_auto_lbppbe = true;
            }
            "la_lba" => spec.la_lba = c_atoi(v) as u16,
            "optimal_xfer_gran" => spec.optimal_xfer_gran = Some(c_atoi(v) as u32),
            "optimal_xfer_len" => spec.optimal_xfer_len = Some(c_atoi(v) as u32),
            "removable" => spec.removable = c_atoi(v) != 0,
            "readonly" => spec.readonly = c_atoi(v) != 0,
            "thin_provisioning" => spec.thin_provisioning = c_atoi(v) != 0,
            // rtgt extension: a soft threshold in percent of the LU mapped.
            "thin_threshold" => {
                spec.thin_threshold = match v.parse::<u8>() {
                    Ok(p) if p <= 100 => p,
                    _ => return Err(CoreError::invalid(format!("bad {k}={v}"))),
                }
            }
            "rotation_rate" => spec.rotation_rate = c_atoi(v) as u16,
            "online" => {
                if c_atoi(v) != 0 {
                    spec.online = true;
                } else {
                    if live.prevent_removal(tid, lun) {
                        return Err(TgtadmError::PreventRemoval.into());
                    }
                    spec.online = false;
                }
            }
            "mode_page" => {
                let pg = parse_mode_page(v)?;
                spec.mode_pages
                    .retain(|p| !(p.pcode == pg.pcode && p.subpcode == pg.subpcode));
                spec.mode_pages.push(pg);
            }
            // rtgt extension (tgt 1.0.85 refuses it): re-read the backing
            // store's size (`auto`) or expose a given size in bytes.
            "disksize" => disksize = Some(parse_disksize(v)?),
            "path" => {
                // Changing the medium needs the unit offline first.
                if spec.path.is_some() && spec.online {
                    return Err(CoreError::invalid(format!("bad {k}={v}")));
                }
                new_path = Some(v.to_string());
            }
            _ => return Err(CoreError::invalid(format!("no parameter {k}"))),
        }
    }
    if let Some(p) = new_path {
        let needs_file = needs_file(table, &spec.bstype);
        spec.path = Some(p);
        spec.size_bytes = 0;
        attach_medium(live, tid, &mut spec, needs_file)?;
    }
    if let Some(d) = disksize {
        resize(table, live, tid, &mut spec, d)?;
    }
    if spec != *old {
        table
            .targets
            .get_mut(&tid)
            .expect("checked above")
            .luns
            .insert(lun, spec.clone());
        live.apply(Effect::LunUpdated { tid, spec });
    }
    Ok(())
}

/// `--params disksize=auto|<bytes>`.
#[derive(Debug, Clone, Copy)]
enum DiskSize {
    /// The backing store's current size.
    Auto,
    /// This many bytes.
    Bytes(u64),
}

fn parse_disksize(v: &str) -> CoreResult<DiskSize> {
    if v == "auto" {
        return Ok(DiskSize::Auto);
    }
    let bad = || CoreError::invalid(format!("bad disksize {v:?}"));
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    v.parse().map(DiskSize::Bytes).map_err(|_| bad())
}

/// Change the capacity of a unit with a medium. The target loop then
/// reports CAPACITY DATA HAS CHANGED to every I_T nexus (SBC-3 section
/// 4.10, SPC-4 section 6.43 ASC 2Ah ASCQ 09h). A file-backed unit cannot
/// be made larger than its store (reads past its end would fail); grow the
/// file or volume first, then ask for `auto`.
fn resize(
    table: &TargetTable,
    live: &mut dyn Live,
    tid: u32,
    spec: &mut LunSpec,
    want: DiskSize,
) -> CoreResult {
    if spec.path.is_none() || spec.device_type == DeviceType::Controller {
        return Err(CoreError::invalid("no medium to resize"));
    }
    let store = if needs_file(table, &spec.bstype) {
        Some(live.backing_size(tid, spec).map_err(CoreError::from)?)
    } else {
        None
    };
    let size = match (want, store) {
        (DiskSize::Auto, Some(s)) => s,
        (DiskSize::Auto, None) => NULL_BS_SIZE,
        (DiskSize::Bytes(n), Some(s)) if n > s => {
            return Err(CoreError::invalid("larger than the backing store"))
        }
        (DiskSize::Bytes(n), _) => n,
    };
    // At least one whole block (READ CAPACITY reports the last LBA).
    if size < spec.block_size as u64 {
        return Err(CoreError::invalid("smaller than one block"));
    }
    spec.size_bytes = size;
    Ok(())
}

/// Whether a backing store type opens a file (an unknown one is assumed
/// to).
fn needs_file(table: &TargetTable, bstype: &str) -> bool {
    table
        .info
        .backing_stores
        .iter()
        .find(|b| b.name == bstype)
        .is_none_or(|b| b.needs_file)
}

/// The attribute items that make a unit just made from its store (tgt's
/// defaults for its tid and LUN) into `spec`: what `save_config` saves as
/// `rtgt_lun_set_params`. Identity (`scsi_id`, `scsi_sn`) is saved when it
/// is not the default of this tid and LUN, so it survives a reload.
pub fn lun_items(table: &TargetTable, tid: u32, spec: &LunSpec) -> Vec<(String, String)> {
    let base = LunSpec::new(tid, spec.lun, spec.device_type, &spec.bstype);
    let thin_default = table
        .info
        .backing_stores
        .iter()
        .find(|b| b.name == spec.bstype)
        .is_some_and(|b| b.thin);
    let mut v: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, val: String| v.push((k.to_string(), val));
    let b = |x: bool| if x { "1" } else { "0" }.to_string();
    for (k, now, was) in [
        ("scsi_id", &spec.scsi_id, &base.scsi_id),
        ("scsi_sn", &spec.scsi_sn, &base.scsi_sn),
        ("vendor_id", &spec.vendor_id, &base.vendor_id),
        ("product_id", &spec.product_id, &base.product_id),
        ("product_rev", &spec.product_rev, &base.product_rev),
    ] {
        // A comma or `=` would not survive tgt's parameter syntax.
        if now != was && !now.contains([',', '=']) {
            put(k, now.clone());
        }
    }
    if spec.sense_format != base.sense_format {
        put("sense_format", b(spec.sense_format));
    }
    if spec.removable != base.removable {
        put("removable", b(spec.removable));
    }
    if spec.thin_provisioning != thin_default {
        put("thin_provisioning", b(spec.thin_provisioning));
    }
    if spec.thin_threshold != base.thin_threshold {
        put("thin_threshold", spec.thin_threshold.to_string());
    }
    if spec.rotation_rate != base.rotation_rate {
        put("rotation_rate", spec.rotation_rate.to_string());
    }
    if spec.no_auto_lbppbe {
        put("lbppbe", spec.lbppbe.to_string());
    }
    if spec.la_lba != base.la_lba {
        put("la_lba", spec.la_lba.to_string());
    }
    if let Some(g) = spec.optimal_xfer_gran {
        put("optimal_xfer_gran", g.to_string());
    }
    if let Some(l) = spec.optimal_xfer_len {
        put("optimal_xfer_len", l.to_string());
    }
    for p in &spec.mode_pages {
        let mut s = format!("{}:{}:{}", p.pcode, p.subpcode, p.data.len());
        for x in &p.data {
            s.push_str(&format!(":{x}"));
        }
        put("mode_page", s);
    }
    v
}

/// The target attributes (`target_set` names and values) that differ from
/// what a new target starts with.
pub fn target_items(table: &TargetTable, tid: u32) -> Vec<(String, String)> {
    let Some(t) = table.target(tid) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for (i, def) in super::params::SESSION_KEYS.iter().enumerate() {
        // MaxQueueCmd is the target node's queue_depth.
        if def.name != "MaxQueueCmd" && t.params.0[i] != table.new_target_params.0[i] {
            v.push((def.name.to_string(), t.params.text(i)));
        }
    }
    if t.nop_interval != table.default_nop_interval {
        v.push(("nop_interval".into(), t.nop_interval.to_string()));
    }
    if t.nop_count != table.default_nop_count {
        v.push(("nop_count".into(), t.nop_count.to_string()));
    }
    if t.state != TargetState::Ready {
        v.push(("state".into(), t.state.name().to_string()));
    }
    v
}
