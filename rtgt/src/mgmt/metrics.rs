//! The Prometheus exposition of rtgtd's counters (`--metrics`): a
//! [`Scrape`] is a plain copy of them taken at scrape time (the data path
//! only bumps the atomics it already has, see `crate::stats`), encoded by
//! prometheus-client as OpenMetrics text.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::stats::{LatencySnapshot, Snapshot};

/// Everything one scrape shows.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub targets: Vec<TargetScrape>,
    /// Logins by outcome label.
    pub logins: Vec<(&'static str, u64)>,
    /// CPU seconds (user and system) of each target loop thread, by
    /// thread name (`tgt/<tid>`, `tgt/<tid>.<n>`).
    pub loop_cpu: Vec<(String, f64)>,
}

#[derive(Debug, Default, Clone)]
pub struct TargetScrape {
    pub name: String,
    pub total: Snapshot,
    pub in_flight: i64,
    pub luns: Vec<LunScrape>,
    /// By session: the initiator's name, the TSIH, the counters.
    pub sessions: Vec<(String, u16, Snapshot)>,
}

#[derive(Debug, Clone)]
pub struct LunScrape {
    pub lun: u64,
    pub counters: Snapshot,
    pub conflicts: u64,
    pub unit_attentions: u64,
    /// Read, write, other.
    pub latency: [LatencySnapshot; 3],
}

/// The scrape as OpenMetrics text (what Prometheus asks for).
pub fn render(s: Scrape) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(s));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// The same in the Prometheus text format 0.0.4 (for clients that do not
/// ask for OpenMetrics: curl, promtool). The two differ only in how a
/// counter's family is named: OpenMetrics names it without `_total` in
/// HELP and TYPE, the older format with; and the older has no `# EOF`.
pub fn openmetrics_to_text(om: &str) -> String {
    let lines: Vec<&str> = om.lines().collect();
    let mut out = String::with_capacity(om.len() + 256);
    let counter_name = |l: &str| {
        l.strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
            .map(str::to_string)
    };
    for (i, l) in lines.iter().enumerate() {
        if *l == "# EOF" {
            continue;
        }
        if let Some(name) = counter_name(l) {
            out.push_str(&format!("# TYPE {name}_total counter\n"));
            continue;
        }
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if lines
                .get(i + 1)
                .and_then(|n| counter_name(n))
                .is_some_and(|n| n == name)
            {
                out.push_str(&format!("# HELP {name}_total{}\n", &rest[name.len()..]));
                continue;
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

type Field = fn(&Snapshot) -> u64;

/// The counters every object has, with their help text.
const COUNTERS: [(&str, &str, Field); 6] = [
    ("commands", "SCSI commands completed", |s| s.commands),
    ("read_bytes", "Data-In bytes sent", |s| s.read_bytes),
    ("written_bytes", "Data-Out bytes received", |s| {
        s.write_bytes
    }),
    (
        "errors",
        "Commands ended in other than GOOD or CONDITION MET",
        |s| s.errors,
    ),
    ("read_commands", "Commands that moved Data-In", |s| {
        s.read_commands
    }),
    ("write_commands", "Commands that moved Data-Out", |s| {
        s.write_commands
    }),
];

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (field, help, get) in COUNTERS {
            let name = format!("rtgt_target_{field}");
            let mut m = enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for t in &self.targets {
                let labels = [("target", t.name.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&get(&t.total), None)?;
            }
            let name = format!("rtgt_lun_{field}");
            let mut m = enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for t in &self.targets {
                for l in &t.luns {
                    let labels = [("target", t.name.clone()), ("lun", l.lun.to_string())];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&get(&l.counters), None)?;
                }
            }
            let name = format!("rtgt_session_{field}");
            let mut m = enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for t in &self.targets {
                for (initiator, tsih, c) in &t.sessions {
                    let labels = [
                        ("target", t.name.clone()),
                        ("initiator", initiator.clone()),
                        ("tsih", tsih.to_string()),
                    ];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&get(c), None)?;
                }
            }
        }
        type LunField = fn(&LunScrape) -> u64;
        let per_lun: [(&str, &str, LunField); 2] = [
            (
                "rtgt_lun_reservation_conflicts",
                "Commands answered RESERVATION CONFLICT",
                |l| l.conflicts,
            ),
            (
                "rtgt_lun_unit_attentions",
                "Commands answered with a unit attention",
                |l| l.unit_attentions,
            ),
        ];
        for (name, help, get) in per_lun {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for t in &self.targets {
                for l in &t.luns {
                    let labels = [("target", t.name.clone()), ("lun", l.lun.to_string())];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&get(l), None)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "rtgt_lun_latency_seconds",
            "Media latency of reads, writes and other commands, from engine start to answer",
            None,
            MetricType::Histogram,
        )?;
        for t in &self.targets {
            for l in &t.luns {
                for (op, h) in ["read", "write", "other"].iter().zip(&l.latency) {
                    let labels = [
                        ("target", t.name.clone()),
                        ("lun", l.lun.to_string()),
                        ("op", op.to_string()),
                    ];
                    m.encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(h.sum_secs, h.count, &h.buckets, None)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "rtgt_target_commands_in_flight",
            "Media tasks on an engine now",
            None,
            MetricType::Gauge,
        )?;
        for t in &self.targets {
            m.encode_family(&[("target", t.name.as_str())])?
                .encode_gauge(&t.in_flight)?;
        }
        let mut m = enc.encode_descriptor(
            "rtgt_target_sessions",
            "Sessions logged in",
            None,
            MetricType::Gauge,
        )?;
        for t in &self.targets {
            m.encode_family(&[("target", t.name.as_str())])?
                .encode_gauge(&(t.sessions.len() as i64))?;
        }
        let mut m = enc.encode_descriptor(
            "rtgt_logins",
            "Logins by outcome (ok, authentication_failure, acl_refused, not_found, error)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in &self.logins {
            m.encode_family(&[("outcome", *outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let mut m = enc.encode_descriptor(
            "rtgt_loop_cpu_seconds",
            "CPU time (user and system) of each target loop thread",
            None,
            MetricType::Counter,
        )?;
        for (thread, secs) in &self.loop_cpu {
            m.encode_family(&[("thread", thread.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(secs, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(n: u64) -> LatencySnapshot {
        let mut buckets: Vec<(f64, u64)> = crate::stats::LATENCY_BOUNDS_US
            .iter()
            .map(|&us| (us as f64 / 1e6, 0))
            .collect();
        buckets.push((f64::INFINITY, 0));
        buckets[2].1 = n;
        LatencySnapshot {
            buckets,
            sum_secs: 0.0004 * n as f64,
            count: n,
        }
    }

    #[test]
    fn renders_every_family_with_its_labels() {
        let s = Scrape {
            targets: vec![TargetScrape {
                name: "iqn.x:t".into(),
                total: Snapshot {
                    commands: 7,
                    write_bytes: 4096,
                    ..Default::default()
                },
                in_flight: 2,
                luns: vec![LunScrape {
                    lun: 1,
                    counters: Snapshot {
                        commands: 5,
                        ..Default::default()
                    },
                    conflicts: 1,
                    unit_attentions: 3,
                    latency: [latency(4), latency(1), latency(0)],
                }],
                sessions: vec![(
                    "iqn.i:a".into(),
                    1,
                    Snapshot {
                        commands: 7,
                        ..Default::default()
                    },
                )],
            }],
            logins: vec![("ok", 1), ("not_found", 2)],
            loop_cpu: vec![("tgt/1".into(), 0.25)],
        };
        let text = render(s);
        for line in [
            "# TYPE rtgt_target_commands counter",
            "rtgt_target_commands_total{target=\"iqn.x:t\"} 7",
            "rtgt_target_written_bytes_total{target=\"iqn.x:t\"} 4096",
            "rtgt_lun_commands_total{target=\"iqn.x:t\",lun=\"1\"} 5",
            "rtgt_lun_reservation_conflicts_total{target=\"iqn.x:t\",lun=\"1\"} 1",
            "rtgt_lun_unit_attentions_total{target=\"iqn.x:t\",lun=\"1\"} 3",
            "rtgt_session_commands_total{target=\"iqn.x:t\",initiator=\"iqn.i:a\",tsih=\"1\"} 7",
            "rtgt_lun_latency_seconds_count{target=\"iqn.x:t\",lun=\"1\",op=\"read\"} 4",
            "rtgt_lun_latency_seconds_bucket{le=\"0.0005\",target=\"iqn.x:t\",lun=\"1\",op=\"read\"} 4",
            "rtgt_lun_latency_seconds_bucket{le=\"+Inf\",target=\"iqn.x:t\",lun=\"1\",op=\"write\"} 1",
            "rtgt_target_commands_in_flight{target=\"iqn.x:t\"} 2",
            "rtgt_target_sessions{target=\"iqn.x:t\"} 1",
            "rtgt_logins_total{outcome=\"not_found\"} 2",
            "rtgt_loop_cpu_seconds_total{thread=\"tgt/1\"} 0.25",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // The older text format names counters' families with _total.
        let old = openmetrics_to_text(&text);
        assert!(old.contains("# HELP rtgt_lun_commands_total SCSI commands completed"));
        assert!(old.contains("# TYPE rtgt_lun_commands_total counter\n"));
        assert!(old.contains("# TYPE rtgt_target_sessions gauge\n"));
        assert!(old.contains("rtgt_lun_commands_total{target=\"iqn.x:t\",lun=\"1\"} 5"));
        assert!(!old.contains("# EOF"));
    }
}
