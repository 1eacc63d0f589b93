//! rtgt-admin: tgt-admin (tgt 1.0.85) in Rust. Same options, same
//! `targets.conf`, same management requests in the same order, sent over
//! tgt's IPC directly (no tgtadm needed). See `rtgt::admin`.

use std::process::exit;

use tgt_admin::engine::DEFAULT_CONF;
use tgt_admin::{Admin, Options};

fn usage() -> ! {
    print!(
        "Usage:\n\
rtgt-admin [OPTION]...\n\
This tool configures tgt targets.\n\n\
\x20 -e, --execute\t\t\tread {DEFAULT_CONF} and execute tgtadm commands\n\
\x20     --delete <value>\t\tdelete all or selected targets\n\
\t\t\t\t(see \"--delete help\" for more info)\n\
\x20     --offline <value>\t\tput all or selected targets in offline state\n\
\t\t\t\t(see \"--offline help\" for more info)\n\
\x20     --ready <value>\t\tput all or selected targets in ready state\n\
\t\t\t\t(see \"--ready help\" for more info)\n\
\x20     --update <value>\t\tupdate configuration for all or selected targets\n\
\t\t\t\t(see \"--update help\" for more info)\n\
\x20 -s, --show\t\t\tshow all the targets\n\
\x20 -C, --control-port <NNNN>\tspecify the control port to connect to\n\
\x20 -c, --conf <conf file>\tspecify an alternative configuration file\n\
\x20     --ignore-errors\t\tcontinue even if tgtadm exits with non-zero code\n\
\x20 -f, --force\t\t\tforce some operations even if the target is in use\n\
\x20 -p, --pretend\t\t\tonly print tgtadm options\n\
\x20     --dump\t\t\tdump current tgtd configuration (note: does not\n\
\t\t\t\tinclude detailed parameters, like write caching)\n\
\x20 -v, --verbose\t\t\tincrease verbosity (show tgtadm commands)\n\
\x20 -h, --help\t\t\tshow this help\n\n"
    );
    exit(0);
}

/// Getopt::Long's names (tgt-admin's spec): (names, takes a value).
const SPEC: &[(&[&str], bool)] = &[
    (&["e", "execute"], false),
    (&["delete"], true),
    (&["offline"], true),
    (&["ready"], true),
    (&["update"], true),
    (&["s", "show"], false),
    (&["c", "conf"], true),
    (&["ignore-errors"], false),
    (&["f", "force"], false),
    (&["p", "pretend"], false),
    (&["dump"], false),
    (&["v", "verbose"], false),
    (&["h", "help"], false),
    (&["C", "control-port"], true),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        usage();
    }
    let mut o = Options {
        control_port: "0".into(),
        ..Default::default()
    };
    let mut help = false;
    let mut bad = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let body = match a.strip_prefix("--").or_else(|| a.strip_prefix('-')) {
            Some(b) if !b.is_empty() => b,
            _ => continue, // non-options are ignored, as by tgt-admin
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        // Exact name first, then a unique prefix of a long name.
        let exact = SPEC.iter().find(|(ns, _)| ns.contains(&name));
        let found = exact.or_else(|| {
            let c: Vec<_> = SPEC
                .iter()
                .filter(|(ns, _)| ns.iter().any(|n| n.len() > 1 && n.starts_with(name)))
                .collect();
            (c.len() == 1).then(|| c[0])
        });
        let Some((names, takes)) = found else {
            eprintln!("Unknown option: {name}");
            bad = true;
            continue;
        };
        let val = if *takes {
            match inline {
                Some(v) => Some(v),
                None if i < args.len() => {
                    i += 1;
                    Some(args[i - 1].clone())
                }
                None => {
                    eprintln!("Option {name} requires an argument");
                    bad = true;
                    continue;
                }
            }
        } else {
            None
        };
        let key = names[names.len() - 1];
        let v = val.unwrap_or_default();
        match key {
            "execute" => o.execute = true,
            "delete" => o.delete = Some(v),
            "offline" => o.offline = Some(v),
            "ready" => o.ready = Some(v),
            "update" => o.update = Some(v),
            "show" => o.show = true,
            "conf" => o.conf = Some(v.into()),
            "ignore-errors" => o.ignore_errors = true,
            "force" => o.force = true,
            "pretend" => o.pretend = true,
            "dump" => o.dump = true,
            "verbose" => o.verbose = true,
            "help" => help = true,
            "control-port" => o.control_port = v,
            _ => {}
        }
    }
    let _ = bad; // tgt-admin goes on after a bad option, as Getopt::Long lets it.
    if help {
        usage();
    }
    let mut out = std::io::stdout();
    let mut admin = Admin::new(o, &mut out);
    if let Err(e) = admin.run() {
        exit(e.0);
    }
}
