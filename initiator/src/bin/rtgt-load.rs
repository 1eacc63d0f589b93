//! rtgt-load: a small iSCSI load generator built on the `initiator` crate.
//!
//! Each session is one login (one TCP connection) with `--qd` commands
//! pipelined on it; sessions are spread over `--threads` OS threads. The run
//! always ends by itself: after `--seconds` (default 10) or `--ios` commands,
//! whichever comes first. Prints one line of plain text (or JSON with `--json`).
//!
//! `--verify` checks every byte end to end: each session writes only its
//! own region, with a pattern that names the unit and its generation, never
//! has two overlapping commands in flight, and checks every read against
//! the last acknowledged write (`initiator::verify`). Transfers are then a
//! random power of two from `--bs` to `--bs-max`. TASK SET FULL and BUSY,
//! a target's answer to more than it takes at once, are counted apart and
//! are not errors.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use initiator::{cdb, Connection, LoginOptions};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Read,
    Write,
    Randread,
    Randwrite,
    /// Sequential mix of reads and writes (`--rwmixread` % reads).
    Rw,
    /// Random mix of reads and writes (`--rwmixread` % reads).
    Randrw,
}

#[derive(Debug, Parser)]
#[command(name = "rtgt-load", about = "iSCSI load generator for rtgt")]
struct Args {
    /// Target portal, IP:PORT.
    #[arg(long)]
    portal: SocketAddr,
    /// Target IQN.
    #[arg(long)]
    target: String,
    /// LUN number.
    #[arg(long, default_value_t = 1)]
    lun: u64,
    /// Number of sessions (one connection each).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Commands in flight per session.
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Bytes per command (a multiple of the LUN's block size).
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// I/O pattern.
    #[arg(long, value_enum, default_value_t = Mode::Randread)]
    rw: Mode,
    /// Percentage of reads for rw/randrw.
    #[arg(long, default_value_t = 50)]
    rwmixread: u8,
    /// Run time in seconds (default 10 when --ios is not given).
    #[arg(long)]
    seconds: Option<f64>,
    /// Total commands over all sessions.
    #[arg(long)]
    ios: Option<u64>,
    /// OS threads (default: one per session).
    #[arg(long)]
    threads: Option<usize>,
    /// Print a JSON object instead of the text line.
    #[arg(long)]
    json: bool,
    /// Negotiate CRC32C header digests.
    #[arg(long)]
    header_digest: bool,
    /// Negotiate CRC32C data digests.
    #[arg(long)]
    data_digest: bool,
    /// Limit I/O to the first N MiB of the LUN.
    #[arg(long)]
    size_mib: Option<u64>,
    /// InitiatorName.
    #[arg(long, default_value = "iqn.2026-11.rs.rtgt:load")]
    initiator_name: String,
    /// Per-wait timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Verify every byte read against what was written (random modes).
    #[arg(long)]
    verify: bool,
    /// With --verify: the largest transfer (a power-of-two multiple of --bs).
    #[arg(long)]
    bs_max: Option<u32>,
}

struct Session {
    conn: Connection,
    inflight: std::collections::HashMap<u32, Instant>,
    next_lba: u64,
    /// Its number among all sessions (its region, with --verify).
    index: usize,
}

#[derive(Default)]
struct ThreadResult {
    lat_us: Vec<u32>,
    ios: u64,
    bad_status: u64,
    /// TASK SET FULL / BUSY answers (--verify).
    busy: u64,
    /// Units that did not read back as written (--verify).
    mismatches: u64,
    /// Bytes moved (--verify: transfers vary).
    bytes: u64,
    /// Bytes whose contents were known at the end (--verify).
    known: u64,
}

struct Plan {
    /// --verify: units per transfer at most (a power of two).
    verify_max_units: Option<usize>,
    lun: u64,
    blocks_per_io: u32,
    block_size: u32,
    region_blocks: u64,
    qd: usize,
    mode: Mode,
    rwmixread: u8,
    deadline: Option<Instant>,
    ios: Option<u64>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtgt-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    if a.sessions == 0 || a.qd == 0 || a.bs == 0 {
        return Err("--sessions, --qd and --bs must be positive".into());
    }
    let opts = LoginOptions {
        initiator_name: a.initiator_name.clone(),
        target_name: Some(a.target.clone()),
        header_digest: a.header_digest,
        data_digest: a.data_digest,
        max_burst_length: 1 << 20,
        first_burst_length: 1 << 18,
        timeout: Duration::from_secs(a.timeout),
        ..Default::default()
    };
    let mut sessions = Vec::new();
    for i in 0..a.sessions {
        let mut o = opts.clone();
        o.isid[5] = i as u8;
        let (mut c, _) = Connection::login(a.portal, &o).map_err(|e| format!("login {i}: {e}"))?;
        // A new I_T nexus may first see a unit attention (29/00); take it now.
        for _ in 0..5 {
            if c.test_unit_ready(a.lun)
                .map_err(|e| format!("TEST UNIT READY: {e}"))?
                .is_good()
            {
                break;
            }
        }
        sessions.push(c);
    }
    let (cap_blocks, block_size) = sessions[0]
        .read_capacity16(a.lun)
        .map_err(|e| format!("READ CAPACITY: {e}"))?;
    if !a.bs.is_multiple_of(block_size) {
        return Err(format!(
            "--bs {} is not a multiple of the block size {block_size}",
            a.bs
        ));
    }
    let blocks_per_io = a.bs / block_size;
    let mut region_blocks = cap_blocks;
    if let Some(m) = a.size_mib {
        region_blocks = region_blocks.min(m * 1024 * 1024 / block_size as u64);
    }
    if region_blocks < blocks_per_io as u64 {
        return Err("LUN (or --size-mib) smaller than one I/O".into());
    }
    let seconds = match (a.seconds, a.ios) {
        (None, None) => Some(10.0),
        (s, _) => s,
    };
    let start = Instant::now();
    let verify_max_units = match (a.verify, a.bs_max) {
        (false, None) => None,
        (false, Some(_)) => return Err("--bs-max goes with --verify".into()),
        (true, m) => {
            if !matches!(a.rw, Mode::Randread | Mode::Randwrite | Mode::Randrw) {
                return Err("--verify needs a random mode (randread, randwrite, randrw)".into());
            }
            let max = m.unwrap_or(a.bs);
            if max < a.bs || !max.is_multiple_of(a.bs) || !(max / a.bs).is_power_of_two() {
                return Err("--bs-max must be --bs times a power of two".into());
            }
            Some((max / a.bs) as usize)
        }
    };
    let plan = Arc::new(Plan {
        verify_max_units,
        lun: a.lun,
        blocks_per_io,
        block_size,
        region_blocks,
        qd: a.qd,
        mode: a.rw,
        rwmixread: a.rwmixread.min(100),
        deadline: seconds.map(|s| start + Duration::from_secs_f64(s)),
        ios: a.ios,
    });
    let submitted = Arc::new(AtomicU64::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let nthreads = a.threads.unwrap_or(a.sessions).clamp(1, a.sessions);
    let mut per_thread: Vec<Vec<Session>> = (0..nthreads).map(|_| Vec::new()).collect();
    let nsessions = sessions.len();
    let n = sessions.len() as u64;
    for (i, conn) in sessions.into_iter().enumerate() {
        // Sequential streams start at evenly spread points of the region.
        let start_lba =
            (region_blocks / n) * i as u64 / blocks_per_io as u64 * blocks_per_io as u64;
        per_thread[i % nthreads].push(Session {
            conn,
            inflight: Default::default(),
            next_lba: start_lba,
            index: i,
        });
    }
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(t, ss)| {
            let (plan, submitted, abort) = (plan.clone(), submitted.clone(), abort.clone());
            std::thread::Builder::new()
                .name(format!("load/{t}"))
                .spawn(move || {
                    let r = if plan.verify_max_units.is_some() {
                        verify_worker(t as u64, ss, &plan, &submitted, &abort, nsessions)
                    } else {
                        worker(t as u64, ss, &plan, &submitted, &abort)
                    };
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
                .expect("spawn")
        })
        .collect();
    let mut total = ThreadResult::default();
    let mut first_err = None;
    for h in handles {
        match h
            .join()
            .map_err(|_| "worker panicked".to_string())
            .and_then(|r| r)
        {
            Ok(r) => {
                total.ios += r.ios;
                total.bad_status += r.bad_status;
                total.busy += r.busy;
                total.mismatches += r.mismatches;
                total.bytes += r.bytes;
                total.known += r.known;
                total.lat_us.extend(r.lat_us);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    total.lat_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if total.lat_us.is_empty() {
            0
        } else {
            let i = ((total.lat_us.len() as f64 - 1.0) * p).round() as usize;
            total.lat_us[i]
        }
    };
    let iops = total.ios as f64 / elapsed;
    let mbps = if a.verify {
        total.bytes as f64 / elapsed / 1e6
    } else {
        iops * a.bs as f64 / 1e6
    };
    let verified = if a.verify {
        format!(
            " busy={} mismatches={} known_mib={:.1}",
            total.busy,
            total.mismatches,
            total.known as f64 / (1 << 20) as f64
        )
    } else {
        String::new()
    };
    let mode = format!("{:?}", a.rw).to_lowercase();
    if a.json {
        println!(
            "{{\"rw\":\"{mode}\",\"bs\":{},\"qd\":{},\"sessions\":{},\"threads\":{nthreads},\"ios\":{},\"bad_status\":{},\"busy\":{},\"mismatches\":{},\"seconds\":{elapsed:.3},\"iops\":{iops:.1},\"mb_per_s\":{mbps:.2},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            a.bs,
            a.qd,
            a.sessions,
            total.ios,
            total.bad_status,
            total.busy,
            total.mismatches,
            pct(0.5),
            pct(0.99),
            total.lat_us.last().copied().unwrap_or(0)
        );
    } else {
        println!(
            "rw={mode} bs={} qd={} sessions={} threads={nthreads} ios={} bad_status={} seconds={elapsed:.2} iops={iops:.0} MB/s={mbps:.1} p50_us={} p99_us={}{verified}",
            a.bs,
            a.qd,
            a.sessions,
            total.ios,
            total.bad_status,
            pct(0.5),
            pct(0.99)
        );
    }
    if total.mismatches > 0 {
        return Err(format!(
            "{} units did not read back as written",
            total.mismatches
        ));
    }
    if total.bad_status > 0 {
        return Err(format!(
            "{} commands ended with a non-GOOD status",
            total.bad_status
        ));
    }
    Ok(())
}

/// Claim one command from the global budget; false when the run is over.
fn may_submit(plan: &Plan, submitted: &AtomicU64, abort: &AtomicBool) -> bool {
    if abort.load(Ordering::Relaxed) {
        return false;
    }
    if let Some(d) = plan.deadline {
        if Instant::now() >= d {
            return false;
        }
    }
    match plan.ios {
        Some(max) => submitted.fetch_add(1, Ordering::Relaxed) < max,
        None => true,
    }
}

fn worker(
    seed: u64,
    mut ss: Vec<Session>,
    plan: &Plan,
    submitted: &AtomicU64,
    abort: &AtomicBool,
) -> Result<ThreadResult, String> {
    let mut rng = StdRng::seed_from_u64(0x5eed ^ seed);
    let io_bytes = (plan.blocks_per_io * plan.block_size) as usize;
    let mut payload = vec![0u8; io_bytes];
    rng.fill_bytes(&mut payload);
    let mut res = ThreadResult::default();
    let slots = plan.region_blocks / plan.blocks_per_io as u64;
    let mut running = true;
    loop {
        if running {
            'fill: for s in ss.iter_mut() {
                while s.inflight.len() < plan.qd {
                    if !may_submit(plan, submitted, abort) {
                        running = false;
                        break 'fill;
                    }
                    let (random, read) = match plan.mode {
                        Mode::Read => (false, true),
                        Mode::Write => (false, false),
                        Mode::Randread => (true, true),
                        Mode::Randwrite => (true, false),
                        Mode::Rw => (false, rng.gen_range(0..100) < plan.rwmixread),
                        Mode::Randrw => (true, rng.gen_range(0..100) < plan.rwmixread),
                    };
                    let lba = if random {
                        rng.gen_range(0..slots) * plan.blocks_per_io as u64
                    } else {
                        let l = s.next_lba;
                        s.next_lba += plan.blocks_per_io as u64;
                        if s.next_lba + plan.blocks_per_io as u64 > plan.region_blocks {
                            s.next_lba = 0;
                        }
                        l
                    };
                    let t0 = Instant::now();
                    let itt = if read {
                        s.conn.submit(
                            plan.lun,
                            &cdb::read16(lba, plan.blocks_per_io),
                            &[],
                            io_bytes as u32,
                        )
                    } else {
                        s.conn.submit(
                            plan.lun,
                            &cdb::write16(lba, plan.blocks_per_io),
                            &payload,
                            0,
                        )
                    }
                    .map_err(|e| format!("submit: {e}"))?;
                    s.inflight.insert(itt, t0);
                }
            }
        }
        let mut any = false;
        for s in ss.iter_mut() {
            if s.inflight.is_empty() {
                continue;
            }
            any = true;
            let (itt, r) = s.conn.complete().map_err(|e| format!("complete: {e}"))?;
            let t0 = s
                .inflight
                .remove(&itt)
                .ok_or("completion for an unknown ITT")?;
            res.lat_us
                .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            res.ios += 1;
            if !r.is_good() {
                res.bad_status += 1;
            }
        }
        if !running && !any {
            break;
        }
    }
    for s in ss.iter_mut() {
        let _ = s.conn.logout(initiator::logout_reason::CLOSE_SESSION);
    }
    Ok(res)
}

/// TASK SET FULL and BUSY: the target took nothing (SAM-5 §5.3).
fn refused(status: u8) -> bool {
    status == 0x28 || status == 0x08
}

/// The --verify worker: see the module text.
fn verify_worker(
    seed: u64,
    mut ss: Vec<Session>,
    plan: &Plan,
    submitted: &AtomicU64,
    abort: &AtomicBool,
    nsessions: usize,
) -> Result<ThreadResult, String> {
    use initiator::verify::{Planned, Region};
    let max_units = plan.verify_max_units.unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(0x7e51 ^ seed);
    let mut res = ThreadResult::default();
    // Each session its own slice of the region, in whole transfers.
    let unit_blocks = plan.blocks_per_io;
    let share = plan.region_blocks / nsessions as u64 / u64::from(unit_blocks);
    let units = (share as usize / max_units * max_units).max(max_units);
    let mut regions: Vec<Region> = ss
        .iter()
        .map(|s| {
            let idx = s.index as u64;
            Region::new(
                idx as u32,
                idx * units as u64 * u64::from(unit_blocks),
                units,
                unit_blocks,
                plan.block_size,
            )
        })
        .collect();
    if (units * nsessions) as u64 * u64::from(unit_blocks) > plan.region_blocks {
        return Err("LUN (or --size-mib) too small for --verify with these sessions".into());
    }
    let mut inflight: Vec<std::collections::HashMap<u32, (Instant, Planned)>> =
        ss.iter().map(|_| Default::default()).collect();
    let mut running = true;
    let mut reported = 0;
    loop {
        if running {
            'fill: for (i, s) in ss.iter_mut().enumerate() {
                let mut tries = 0;
                while inflight[i].len() < plan.qd && tries < 8 {
                    if !may_submit(plan, submitted, abort) {
                        running = false;
                        break 'fill;
                    }
                    let n = 1usize << rng.gen_range(0..=max_units.trailing_zeros());
                    let start = rng.gen_range(0..=(units - n) / n) * n;
                    let read = match plan.mode {
                        Mode::Randread => true,
                        Mode::Randwrite => false,
                        _ => rng.gen_range(0..100) < plan.rwmixread,
                    };
                    let mut data = Vec::new();
                    let Some(p) = regions[i].plan(start, n, !read, &mut data) else {
                        // Overlaps a command in flight: the budget goes back.
                        tries += 1;
                        submitted.fetch_sub(u64::from(plan.ios.is_some()), Ordering::Relaxed);
                        continue;
                    };
                    let (lba, blocks) = regions[i].extent(&p);
                    let t0 = Instant::now();
                    let itt = if read {
                        s.conn.submit(
                            plan.lun,
                            &cdb::read16(lba, blocks),
                            &[],
                            blocks * plan.block_size,
                        )
                    } else {
                        s.conn
                            .submit(plan.lun, &cdb::write16(lba, blocks), &data, 0)
                    }
                    .map_err(|e| format!("submit: {e}"))?;
                    inflight[i].insert(itt, (t0, p));
                }
            }
        }
        let mut any = false;
        for (i, s) in ss.iter_mut().enumerate() {
            if inflight[i].is_empty() {
                continue;
            }
            any = true;
            let (itt, r) = s.conn.complete().map_err(|e| format!("complete: {e}"))?;
            let (t0, p) = inflight[i]
                .remove(&itt)
                .ok_or("completion for an unknown ITT")?;
            res.lat_us
                .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            res.ios += 1;
            let good = r.is_good();
            if refused(r.status) {
                res.busy += 1;
            } else if !good {
                res.bad_status += 1;
            }
            let (_, blocks) = regions[i].extent(&p);
            if good {
                res.bytes += u64::from(blocks) * u64::from(plan.block_size);
            }
            if p.is_write() {
                regions[i].wrote(&p, good, refused(r.status));
            } else {
                let bad = regions[i].read(&p, good.then_some(&r.data[..]));
                for m in &bad {
                    if reported < 20 {
                        eprintln!("rtgt-load: MISMATCH {m}");
                        reported += 1;
                    }
                }
                res.mismatches += bad.len() as u64;
            }
        }
        if !running && !any {
            break;
        }
    }
    res.known = regions.iter().map(|r| r.known_bytes()).sum();
    for s in ss.iter_mut() {
        let _ = s.conn.logout(initiator::logout_reason::CLOSE_SESSION);
    }
    Ok(res)
}
