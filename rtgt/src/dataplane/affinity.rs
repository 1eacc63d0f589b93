//! Where a target's loop threads run: `--cpus` pins them to chosen cores
//! (SPDK's `-m` core mask or a list like `2-5,8`), round-robin in the
//! order the loops start, so a hot target's loops keep their caches and
//! stay off the cores the initiators or other targets use.

/// Parse `--cpus`: a hex mask (`0x3c`) or a list of cores and ranges
/// (`0,2-4`). Returns the cores in ascending order.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let mut cpus = Vec::new();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let mask = u128::from_str_radix(hex, 16).map_err(|_| format!("bad core mask {s:?}"))?;
        cpus.extend((0..128).filter(|i| mask & (1u128 << i) != 0));
    } else {
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let a: usize = a.trim().parse().map_err(|_| format!("bad core {part:?}"))?;
            let b: usize = b.trim().parse().map_err(|_| format!("bad core {part:?}"))?;
            if a > b || b >= 1024 {
                return Err(format!("bad core range {part:?}"));
            }
            cpus.extend(a..=b);
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(format!("no cores in {s:?}"));
    }
    Ok(cpus)
}

/// Pin the calling thread to one core. Failure (a core that is offline or
/// outside our cpuset) is reported and the thread runs unpinned.
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it
    // (cpu is bounded by CPU_SETSIZE below), and sched_setaffinity reads
    // exactly size_of::<cpu_set_t>() bytes from it.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            tracing::warn!(cpu, "core number too large; loop not pinned");
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "cannot pin loop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_lists() {
        assert_eq!(parse_cpus("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpus("0x3c").unwrap(), vec![2, 3, 4, 5]);
        assert_eq!(parse_cpus("0,2-4,3").unwrap(), vec![0, 2, 3, 4]);
        assert_eq!(parse_cpus("7").unwrap(), vec![7]);
        assert!(parse_cpus("0x0").is_err());
        assert!(parse_cpus("4-2").is_err());
        assert!(parse_cpus("x").is_err());
        assert!(parse_cpus("").is_err());
    }
}
