//! rtgtd: the rtgt iSCSI target daemon. Options follow tgtd's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rtgt::daemon::{self, Config, Demo};

/// A multi-core userspace iSCSI target with tgt's management interface.
#[derive(Parser, Debug)]
#[command(name = "rtgtd", version, about)]
struct Args {
    /// Stay in the foreground (tgtd's -f); otherwise detach.
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Management control port: the socket is /var/run/tgtd/socket.<N>.
    #[arg(short = 'C', long = "control-port", default_value_t = 0)]
    control_port: u16,
    /// Debug logging (tgtd's -d 1).
    #[arg(short = 'd', long = "debug", num_args = 0..=1, default_missing_value = "1")]
    debug: Option<u32>,
    /// iSCSI driver options, as tgtd: `--iscsi portal=IP:PORT` (repeatable;
    /// several `portal=` may also be joined with commas).
    #[arg(long = "iscsi")]
    iscsi: Vec<String>,
    /// Worker threads for blocking disk I/O per target loop (tgtd's -t; default twice the cores, at least 4).
    #[arg(short = 't', long = "nr_iothreads")]
    nr_iothreads: Option<usize>,
    /// Event-loop threads per target; a target's sessions are spread over
    /// them (default: one per four cores, at least one).
    #[arg(long = "target-loops")]
    target_loops: Option<usize>,
    /// After a connection last had work, keep polling its socket this
    /// many microseconds before sleeping in the kernel: low latency at
    /// low queue depth for a bounded cost; an idle target never polls
    /// (0 turns polling off).
    #[arg(long = "poll-us", default_value_t = rtgt::dataplane::DEFAULT_POLL_US)]
    poll_us: u32,
    /// Pin the target loops to these cores, round-robin: a hex mask as
    /// SPDK's -m (0x3c) or a list (2-5,8). Default: not pinned.
    #[arg(long = "cpus")]
    cpus: Option<String>,
    /// The engine behind `-E rdwr` LUNs: `pool` (worker threads, as tgt's
    /// name says) or `uring` (the loop's io_uring, as `-E aio`).
    #[arg(long = "rdwr-engine", default_value = "pool", value_parser = ["pool", "uring"])]
    rdwr_engine: String,
    /// This gateway's port identity, for all its targets: the iSCSI target
    /// portal group tag, the SCSI target port group and the relative
    /// target port identifier (1 to 65535; tgt's 1 by default). Several
    /// rtgtd serving one RBD image (one LU) must each have their own.
    #[arg(long = "port-group", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    port_group: u16,
    /// Serve a ready demo target: a sparse file in --data-dir, on
    /// 127.0.0.1:3260 unless --iscsi names portals.
    #[arg(long)]
    demo: bool,
    /// Where the demo keeps its backing file, and persistent
    /// reservations made with APTPL their state (under `pr/`).
    #[arg(long = "data-dir", default_value = "/var/lib/rtgt")]
    data_dir: PathBuf,
    /// Serve Prometheus metrics (OpenMetrics text) at
    /// http://ADDR:PORT/metrics; off by default.
    #[arg(long = "metrics", value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// JSON-RPC socket (SPDK's rpc.py: `rpc.py -s PATH ...`); by default
    /// `/var/run/tgtd/socket.<control-port>.rpc` (under `$TGT_IPC_SOCKET`
    /// when set), as spdk_tgt's `-r`.
    #[arg(short = 'r', long = "rpc-socket", value_name = "PATH")]
    rpc_socket: Option<PathBuf>,
    /// Apply a configuration saved with `rpc.py save_config` at start-up,
    /// as `spdk_tgt --json` does.
    #[arg(short = 'c', long = "json", value_name = "FILE")]
    json: Option<PathBuf>,
    /// Size of the demo LUN in bytes.
    #[arg(long = "demo-size", default_value_t = 1 << 30)]
    demo_size: u64,
}

/// What `--iscsi` options say.
#[derive(Default)]
struct IscsiOpts {
    portals: Vec<SocketAddr>,
    nop_interval: Option<i32>,
    nop_count: Option<i32>,
}

fn parse_iscsi(opts: &[String]) -> Result<IscsiOpts, String> {
    let mut out = IscsiOpts::default();
    for o in opts {
        for kv in o.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("bad --iscsi option '{kv}'"))?;
            match k {
                "portal" => {
                    let a = daemon::parse_portal(v).ok_or_else(|| format!("bad portal '{v}'"))?;
                    out.portals.push(a);
                }
                // tgtd's defaults for new targets.
                "nop_interval" => {
                    out.nop_interval =
                        Some(v.parse().map_err(|_| format!("bad nop_interval '{v}'"))?)
                }
                "nop_count" => {
                    out.nop_count = Some(v.parse().map_err(|_| format!("bad nop_count '{v}'"))?)
                }
                _ => return Err(format!("unknown --iscsi option '{k}'")),
            }
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let iscsi = match parse_iscsi(&args.iscsi) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rtgtd: {e}");
            return ExitCode::from(1);
        }
    };
    let mut portals = iscsi.portals;
    if portals.is_empty() {
        portals = if args.demo {
            vec!["127.0.0.1:3260".parse().unwrap()]
        } else {
            vec![
                "0.0.0.0:3260".parse().unwrap(),
                "[::]:3260".parse().unwrap(),
            ]
        };
    }
    rtgt::backend::set_rdwr_uses_uring(args.rdwr_engine == "uring");
    let cfg = Config {
        control_port: args.control_port,
        portals,
        debug: args.debug.unwrap_or(0) > 0,
        io_threads: args.nr_iothreads,
        target_loops: args.target_loops,
        poll_us: args.poll_us,
        port_group: args.port_group,
        cpus: match args
            .cpus
            .as_deref()
            .map(rtgt::dataplane::affinity::parse_cpus)
        {
            None => Vec::new(),
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                eprintln!("rtgtd: --cpus: {e}");
                std::process::exit(2);
            }
        },
        nop_interval: iscsi.nop_interval,
        nop_count: iscsi.nop_count,
        demo: args.demo.then_some(Demo {
            data_dir: args.data_dir.clone(),
            size: args.demo_size,
        }),
        data_dir: args.data_dir,
        metrics: args.metrics,
        rpc_socket: args.rpc_socket,
        json_config: args.json,
    };
    if !args.foreground {
        // Detach like tgtd before any thread exists.
        // SAFETY: no other threads run yet; daemon(3) forks and setsid()s.
        if unsafe { libc::daemon(0, 0) } != 0 {
            eprintln!("rtgtd: cannot detach: {}", std::io::Error::last_os_error());
            return ExitCode::from(1);
        }
    }
    // Command buffers of up to MaxBurstLength come and go at line rate:
    // keep glibc from mmap()ing and unmapping each one (page faults and
    // zeroing were ~15% of the cycles of 256K writes).
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    // Two malloc arenas unless MALLOC_ARENA_MAX says otherwise. With
    // glibc's default (8 per core) every loop and worker thread gets an
    // arena whose heaps keep freed command buffers: after a 120 s soak
    // with qemu-img traffic (bench/soak.sh 120) rtgtd kept 158 MiB after
    // the last logout; with 4 arenas 83 MiB, with 2 arenas 9.5 MiB, at
    // the same I/O rate within the noise. The data path allocates nothing
    // per command in steady state (tests/no_alloc.rs), so fewer arenas
    // cost no lock traffic there.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: as above.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    match daemon::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtgtd: {e}");
            ExitCode::from(1)
        }
    }
}
