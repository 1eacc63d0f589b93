#!/usr/bin/env python3
"""RBD side by side: Debian's tgtd with tgt-rbd, rtgtd, and `rbd bench` (the
cluster's own ceiling, librbd with no iSCSI in between) on one one-node
cluster, in one run.

Each daemon serves its own 256 MiB image (two daemons on one image would
pass its exclusive lock back and forth), filled first so reads touch
data; the same client (rtgt-load) loads each in turn, alternating, for
several rounds. Records IOPS, MB/s and the target's CPU time per I/O
(utime+stime of all its threads, from /proc). Prints medians with ratios.

usage: bench/rbd.py [--rounds 3] [--seconds 5] [--conf CEPH.CONF] [--defaults]
                    [--store memstore|bluestore] [--json FILE]

Without --conf it starts a throwaway cluster with tests/ceph/cluster.sh.
Needs: tgt, tgt-rbd, ceph-mon, ceph-osd, ceph-common, and a release build.
"""
import argparse
import json
import os
import resource
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (IQN, REL, ROOT, TICK, Target, cpu_ticks, fmt, median, peak_rss_mib,  # noqa: E402
                   run_load)

SIZE_MIB = 256
WORKLOADS = [
    ("4K randread QD64", dict(rw="randread", bs=4096, qd=64), ("read", "rand", 4096, 64)),
    ("4K randwrite QD64", dict(rw="randwrite", bs=4096, qd=64), ("write", "rand", 4096, 64)),
    ("256K seq write QD16", dict(rw="write", bs=262144, qd=16), ("write", "seq", 262144, 16)),
]


def rbd(conf, *args, **kw):
    return subprocess.run(["rbd", "-c", conf, *args], check=True, capture_output=True, text=True, **kw)


def rbd_bench(conf, image, io_type, pattern, bs, threads, secs):
    """`rbd bench` for about `secs` seconds: returns IOPS and MB/s."""
    # rbd bench runs a fixed total; size it from a short probe.
    def run(total):
        r = rbd(conf, "bench", "--io-type", io_type, "--io-pattern", pattern, "--io-size", str(bs),
                "--io-threads", str(threads), "--io-total", str(total), f"rbd/{image}", timeout=600)
        m = re.search(r"elapsed:\s*([0-9.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([0-9.]+)\s+bytes/sec:\s*([0-9.]+)",
                      r.stdout)
        if not m:
            raise RuntimeError(f"rbd bench output: {r.stdout[-300:]}")
        return float(m.group(1)), float(m.group(3)), float(m.group(4))
    el, iops, _ = run(bs * 2000)
    total = max(int(iops * secs) * bs, bs * 2000)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    el, iops, _ = run(min(total, 64 << 30))
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    # librbd's own CPU per I/O: the floor any librbd-based target pays.
    return dict(iops=iops, mbs=iops * bs / 1e6, cpu_us_per_io=cpu * 1e6 / max(iops * el, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conf", help="an existing cluster's ceph.conf (default: start one)")
    ap.add_argument("--store", default="memstore", help="object store of the cluster started")
    ap.add_argument("--defaults", action="store_true", help="keep tgt's default session parameters")
    ap.add_argument("--only", help="run workloads whose name contains this text")
    ap.add_argument("--json")
    a = ap.parse_args()
    for tool in ("tgtd", "tgtadm", "rbd"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not installed (apt-get install tgt tgt-rbd ceph-common)")
    if not os.path.exists(os.path.join(REL, "rtgtd")):
        sys.exit("bench: build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="rtgt-rbdbench-")
    cluster = None
    conf = a.conf
    if not conf:
        cluster = os.path.join(work, "ceph")
        conf = subprocess.run([os.path.join(ROOT, "tests/ceph/cluster.sh"), "start", cluster, a.store],
                              check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    loads = [w for w in WORKLOADS if not a.only or a.only in w[0]]
    targets = []
    results = {}
    peaks = {}
    try:
        for name in ("tgt", "rtgt", "rbd"):
            image = f"bench-{name}-{os.getpid()}"
            rbd(conf, "create", "--size", f"{SIZE_MIB}M", f"rbd/{image}")
            rbd(conf, "bench", "--io-type", "write", "--io-pattern", "seq", "--io-size", "4M",
                "--io-threads", "4", "--io-total", f"{SIZE_MIB}M", f"rbd/{image}", timeout=600)
        for name, binary in (("tgt", shutil.which("tgtd")), ("rtgt", os.path.join(REL, "rtgtd"))):
            t = Target(name, binary, work)
            targets.append(t)
            t.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
            t.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--bstype", "rbd",
                  "-b", f"rbd/bench-{name}-{os.getpid()}", "--bsopts", f"conf={conf}")
            if not a.defaults:
                for k, v in [("MaxRecvDataSegmentLength", "262144"), ("MaxBurstLength", "1048576"),
                             ("FirstBurstLength", "262144"), ("InitialR2T", "No"), ("MaxOutstandingR2T", "8")]:
                    t.adm("--op", "update", "--mode", "target", "--tid", "1", "-n", k, "-v", v)
            t.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        for rnd in range(a.rounds):
            for name, args, (io_type, pattern, bs, qd) in loads:
                order = ["rbd", *targets] if rnd % 2 == 0 else [*targets[::-1], "rbd"]
                for t in order:
                    if t == "rbd":
                        r = rbd_bench(conf, f"bench-rbd-{os.getpid()}", io_type, pattern, bs, qd, a.seconds)
                        who = "rbd bench"
                    else:
                        c0 = cpu_ticks(t.proc.pid)
                        r = run_load(t, 1, a.seconds, dict(args))
                        c1 = cpu_ticks(t.proc.pid)
                        if r is None:
                            continue
                        r["cpu_us_per_io"] = (c1 - c0) / TICK * 1e6 / max(r["ios"], 1)
                        who = t.name
                    results.setdefault(name, {}).setdefault(who, []).append(r)
                    print(f"round {rnd + 1} {name:22} {who:9} iops={r['iops']:.0f} "
                          f"cpu/io={r.get('cpu_us_per_io', 0):.1f}us", file=sys.stderr)
    finally:
        for t in targets:
            peaks[t.name] = peak_rss_mib(t.proc.pid)
            t.stop()
        if cluster:
            subprocess.run([os.path.join(ROOT, "tests/ceph/cluster.sh"), "stop", cluster])
        shutil.rmtree(work, ignore_errors=True)

    def med(name, who, key):
        return median(results, name, who, key)

    def ratio(x, y):
        return fmt(x / y if x and y else None, 2)

    print("\npeak RSS (MiB): " + ", ".join(f"{k} {fmt(v, 1)}" for k, v in peaks.items()))
    print(f"\n{os.cpu_count()} CPUs, {a.rounds} rounds of {a.seconds} s, medians; one-node cluster "
          f"({'given' if a.conf else a.store}); {'tgt default' if a.defaults else 'tuned'} session parameters; "
          "CPU = target's CPU time per I/O\n")
    print("| workload | rbd bench IOPS | tgt IOPS | rtgt IOPS | rtgt/rbd bench | rtgt/tgt | "
          "rbd bench MB/s | tgt MB/s | rtgt MB/s | rbd bench CPU us/IO | tgt CPU us/IO | rtgt CPU us/IO | "
          "CPU tgt/rtgt |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, _, _ in WORKLOADS:
        if name not in results:
            continue
        bi, ti, ri = med(name, "rbd bench", "iops"), med(name, "tgt", "iops"), med(name, "rtgt", "iops")
        tc, rc = med(name, "tgt", "cpu_us_per_io"), med(name, "rtgt", "cpu_us_per_io")
        print(f"| {name} | {fmt(bi)} | {fmt(ti)} | {fmt(ri)} | {ratio(ri, bi)} | {ratio(ri, ti)} | "
              f"{fmt(med(name, 'rbd bench', 'mbs'), 1)} | {fmt(med(name, 'tgt', 'mbs'), 1)} | "
              f"{fmt(med(name, 'rtgt', 'mbs'), 1)} | {fmt(med(name, 'rbd bench', 'cpu_us_per_io'), 1)} | "
              f"{fmt(tc, 1)} | {fmt(rc, 1)} | {ratio(tc, rc)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
