//! The Prometheus endpoint (`--metrics`) of a running rtgtd: its counters
//! match the I/O done, logins count by outcome, the exposition passes
//! `promtool check metrics` (where Debian's prometheus package is
//! installed), and bad HTTP gets an error, never a stall.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{free_port, have, sparse_file, Daemon};
use initiator::{Connection, LoginOptions};

const IQN: &str = "iqn.2026-12.io.rtgt:metrics";

fn get(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the sample line `name{labels}`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn counters_match_the_io_done_and_promtool_accepts_them() {
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with("metrics", &["--metrics", &addr]);
    let disk = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &disk, false);
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:metrics-test".into(),
        target_name: Some(IQN.into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut c, _) = Connection::login(d.portal, &o).expect("login");
    let _ = c.test_unit_ready(1); // the power-on unit attention
    assert!(c.test_unit_ready(1).unwrap().is_good());
    for i in 0..10u64 {
        c.write(1, i * 8, &[i as u8; 4096], 512).unwrap();
    }
    for i in 0..4u64 {
        c.read(1, i * 8, 8, 512).unwrap();
    }
    // A login to a target that does not exist.
    let bad = LoginOptions {
        target_name: Some("iqn.2026-12.io.rtgt:nope".into()),
        ..o.clone()
    };
    assert!(Connection::login(d.portal, &bad).is_err());

    let resp = get(&addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, text) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lun = format!("{{target=\"{IQN}\",lun=\"1\"}}");
    assert_eq!(
        sample(text, &format!("rtgt_lun_write_commands_total{lun}")),
        10.0
    );
    assert_eq!(
        sample(text, &format!("rtgt_lun_written_bytes_total{lun}")),
        40960.0
    );
    assert_eq!(
        sample(text, &format!("rtgt_lun_read_commands_total{lun}")),
        4.0
    );
    assert_eq!(
        sample(text, &format!("rtgt_lun_read_bytes_total{lun}")),
        16384.0
    );
    assert_eq!(
        sample(text, &format!("rtgt_lun_unit_attentions_total{lun}")),
        1.0
    );
    let ops = |op: &str| format!("{{target=\"{IQN}\",lun=\"1\",op=\"{op}\"}}");
    assert_eq!(
        sample(
            text,
            &format!("rtgt_lun_latency_seconds_count{}", ops("write"))
        ),
        10.0
    );
    assert_eq!(
        sample(
            text,
            &format!("rtgt_lun_latency_seconds_count{}", ops("read"))
        ),
        4.0
    );
    assert_eq!(sample(text, "rtgt_logins_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        sample(text, "rtgt_logins_total{outcome=\"not_found\"}"),
        1.0
    );
    assert_eq!(
        sample(text, &format!("rtgt_target_sessions{{target=\"{IQN}\"}}")),
        1.0
    );
    assert_eq!(
        sample(
            text,
            &format!("rtgt_target_commands_in_flight{{target=\"{IQN}\"}}")
        ),
        0.0
    );
    assert!(
        text.contains("rtgt_loop_cpu_seconds_total{thread=\"tgt/1\"}"),
        "{text}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    // Prometheus itself asks for OpenMetrics, and gets it.
    let om = get(
        &addr,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
    );
    assert!(
        om.contains("application/openmetrics-text") && om.ends_with("# EOF\n"),
        "{om}"
    );
    if have("promtool") {
        let f = d.dir.join("metrics.txt");
        std::fs::write(&f, text).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", f.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("promtool not installed: its check is skipped");
    }

    // Bad requests: answered, and the endpoint and the target go on.
    assert!(get(&addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(get(&addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(get(&addr, "hello\r\n\r\n").starts_with("HTTP/1.1 400"));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(get(&addr, &huge).starts_with("HTTP/1.1 431"));
    // A client that sends nothing holds its connection 5 s at most, and
    // others are served meanwhile.
    let _idle = TcpStream::connect(&addr).unwrap();
    assert!(get(&addr, "GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
    assert!(c.test_unit_ready(1).unwrap().is_good());
}
