#!/usr/bin/env python3
"""Side-by-side benchmark of Debian's tgtd and rtgtd on one machine.

Both daemons serve identical LUNs (a file in tmpfs as LUN 1, a null store as
LUN 2); the same clients load each in turn, alternating, for several rounds:
libiscsi's iscsi-perf for 4K random reads, qemu-img bench (QEMU's block
layer over libiscsi) for three rows, and rtgt's load generator (rtgt-load)
for the rest. For every run it records IOPS, MB/s, p50/p99
latency (rtgt-load) and the target's CPU time per I/O (utime+stime of all its
threads, from /proc). Prints a table of medians with rtgt/tgt ratios.

usage: bench/bench.py [--rounds 3] [--seconds 5] [--quick] [--json FILE]
                      [--rtgt-args "--poll-us 50"] [--variant "nopoll:--poll-us 0"]

--variant adds another rtgtd with other options to the same run (its own
column), e.g. to show what adaptive polling or pinning buys; "old:@/path/rtgtd"
runs another build (an earlier commit) side by side.
Needs: tgt, libiscsi-bin, and a release build (cargo build --release).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
IQN = "iqn.2026-11.io.rtgt.bench:disk"
TICK = os.sysconf("SC_CLK_TCK")

# name, tool, lun, args
WORKLOADS = [
    ("4K randread QD64", "perf", 1, {}),
    ("4K randread QD64 (load)", "load", 1, dict(rw="randread", bs=4096, qd=64)),
    ("4K randwrite QD64", "load", 1, dict(rw="randwrite", bs=4096, qd=64)),
    ("256K seq read QD16", "load", 1, dict(rw="read", bs=262144, qd=16)),
    ("256K seq write QD16", "load", 1, dict(rw="write", bs=262144, qd=16)),
    ("4K read QD1", "load", 1, dict(rw="randread", bs=4096, qd=1)),
    ("4K randread QD32 x4 sessions", "load", 1, dict(rw="randread", bs=4096, qd=32, sessions=4)),
    ("4K randread QD64 null", "load", 2, dict(rw="randread", bs=4096, qd=64)),
    # A second real client: QEMU's block layer over libiscsi.
    ("256K seq write QD16 (qemu-img)", "qemu", 1, dict(write=True, bs=262144, qd=16, count=20000)),
    ("256K seq read QD16 (qemu-img)", "qemu", 1, dict(write=False, bs=262144, qd=16, count=20000)),
    ("4K read QD1 (qemu-img)", "qemu", 1, dict(write=False, bs=4096, qd=1, count=60000)),
]


def median(results, name, who, key):
    """The median of `key` over `who`'s runs of workload `name` (None if none)."""
    v = [r[key] for r in results.get(name, {}).get(who, []) if r.get(key) is not None]
    return statistics.median(v) if v else None


def fmt(x, nd=0):
    return "-" if x is None else f"{x:.{nd}f}"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    # fields 14,15 (utime, stime) are at 11,12 after the ")" split; threads included
    return int(parts[11]) + int(parts[12])


def peak_rss_mib(pid):
    """The process's peak resident set (VmHWM), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Target:
    count = 0  # daemons started, for distinct control ports

    def __init__(self, name, binary, work, extra=()):
        self.name = name
        self.port = free_port()
        Target.count += 1
        self.ctl = 20000 + (os.getpid() * 7 + Target.count) % 12000
        self.env = dict(os.environ, TGT_IPC_SOCKET=os.path.join(work, f"{name}-sock"))
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "-f", "-C", str(self.ctl), "--iscsi", f"portal=127.0.0.1:{self.port}", *extra],
            env=self.env, stdout=self.log, stderr=self.log)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if os.path.exists(self.env["TGT_IPC_SOCKET"] + f".{self.ctl}"):
                    break
            except OSError:
                pass
            time.sleep(0.05)

    def adm(self, *args):
        subprocess.run(["tgtadm", "-C", str(self.ctl), "--lld", "iscsi", *args], env=self.env, check=True)

    def setup(self, disk, null_size, tune=True):
        self.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", IQN)
        self.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", disk)
        self.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "2", "-E", "null", "-b", "/dev/null")
        # Let fast initiators go fast on both (tgt defaults are conservative).
        for k, v in [] if not tune else [("MaxRecvDataSegmentLength", "262144"), ("MaxBurstLength", "1048576"),
                     ("FirstBurstLength", "262144"), ("InitialR2T", "No"), ("MaxOutstandingR2T", "8")]:
            self.adm("--op", "update", "--mode", "target", "--tid", "1", "-n", k, "-v", v)
        self.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def run_perf(t, lun, secs):
    out = subprocess.run(["iscsi-perf", "-t", str(secs), "-m", "64", "-b", "8", "-r",
                          f"iscsi://127.0.0.1:{t.port}/{IQN}/{lun}"],
                         capture_output=True, text=True, timeout=secs + 30).stdout
    m = re.findall(r"iops average (\d+) \((\d+) MB/s\)", out.replace("\r", "\n"))
    if not m:
        return None
    iops, mbs = m[-1]
    return dict(iops=float(iops), mbs=float(mbs), ios=float(iops) * secs)


def run_qemu(t, lun, args):
    """qemu-img bench over libiscsi: a fixed number of requests, timed."""
    if not shutil.which("qemu-img"):
        return None
    cmd = ["qemu-img", "bench", "-f", "raw", "-n", "-c", str(args["count"]), "-d", str(args["qd"]),
           "-s", str(args["bs"])]
    if args["write"]:
        cmd.append("-w")
    cmd.append(f"iscsi://127.0.0.1:{t.port}/{IQN}/{lun}")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    secs = time.monotonic() - t0
    m = re.search(r"Run completed in ([0-9.]+) seconds", r.stdout)
    if r.returncode != 0 or not m:
        print(f"  {t.name}: qemu-img bench failed: {r.stdout[-300:]} {r.stderr[-300:]}", file=sys.stderr)
        return None
    run = float(m.group(1)) or secs
    n = args["count"]
    return dict(iops=n / run, mbs=n * args["bs"] / run / 1e6, ios=float(n))


def run_load(t, lun, secs, args):
    cmd = [os.path.join(REL, "rtgt-load"), "--portal", f"127.0.0.1:{t.port}", "--target", IQN,
           "--lun", str(lun), "--seconds", str(secs), "--json", "--size-mib", "256"]
    for k, v in args.items():
        cmd += [f"--{k}", str(v)]
    if args.get("sessions", 1) > 1:
        cmd += ["--threads", str(args["sessions"])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
    try:
        j = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  {t.name}: load failed: {r.stdout[-300:]} {r.stderr[-300:]}", file=sys.stderr)
        return None
    return dict(iops=j["iops"], mbs=j.get("mb_per_s", j.get("MB/s", 0)), ios=j["ios"],
                p50=j.get("p50_us"), p99=j.get("p99_us"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="first three workloads only")
    ap.add_argument("--only", help="run workloads whose name contains this text")
    ap.add_argument("--defaults", action="store_true", help="keep tgt's default session parameters")
    ap.add_argument("--dir", help="where the backing file lives (default: /dev/shm, tmpfs)")
    ap.add_argument("--json")
    ap.add_argument("--rtgt-args", default="", help="extra rtgtd options")
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL:OPTIONS, another rtgtd with these options in the same run; "
                         "OPTIONS starting with @PATH use the rtgtd binary at PATH")
    a = ap.parse_args()
    for tool in ("tgtd", "tgtadm", "iscsi-perf"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not installed (apt-get install tgt libiscsi-bin)")
    for b in ("rtgtd", "rtgt-load"):
        if not os.path.exists(os.path.join(REL, b)):
            sys.exit("bench: build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="rtgt-bench-", dir=a.dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None))
    disk = os.path.join(work, "disk.img")
    with open(disk, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(256):
            f.write(chunk)
    rtgtd = os.path.join(REL, "rtgtd")
    targets = [Target("tgt", shutil.which("tgtd"), work), Target("rtgt", rtgtd, work, a.rtgt_args.split())]
    for v in a.variant:
        label, _, opts = v.partition(":")
        words = opts.split()
        binary = rtgtd
        if words and words[0].startswith("@"):
            # Another build of rtgtd (e.g. an older commit's), same options otherwise.
            binary, words = words[0][1:], words[1:]
        targets.append(Target(label, binary, work, words))
    results = {}
    try:
        for t in targets:
            t.setup(disk, 256 << 20, tune=not a.defaults)
        loads = WORKLOADS[:3] if a.quick else WORKLOADS
        if a.only:
            loads = [w for w in loads if a.only in w[0]]
        for rnd in range(a.rounds):
            for name, tool, lun, args in loads:
                order = targets if rnd % 2 == 0 else targets[::-1]
                for t in order:
                    c0 = cpu_ticks(t.proc.pid)
                    if tool == "perf":
                        r = run_perf(t, lun, a.seconds)
                    elif tool == "qemu":
                        r = run_qemu(t, lun, args)
                    else:
                        r = run_load(t, lun, a.seconds, args)
                    c1 = cpu_ticks(t.proc.pid)
                    if r is None:
                        continue
                    r["cpu_us_per_io"] = (c1 - c0) / TICK * 1e6 / max(r["ios"], 1)
                    results.setdefault(name, {}).setdefault(t.name, []).append(r)
                    print(f"round {rnd + 1} {name:32} {t.name:5} iops={r['iops']:.0f} "
                          f"cpu/io={r['cpu_us_per_io']:.1f}us", file=sys.stderr)
    finally:
        peaks = {}
        for t in targets:
            peaks[t.name] = peak_rss_mib(t.proc.pid)
            t.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(name, who, key):
        return median(results, name, who, key)

    print("\npeak RSS (MiB): " + ", ".join(f"{k} {fmt(v, 1)}" for k, v in peaks.items()))
    print(f"\n{os.cpu_count()} CPUs, {a.rounds} rounds of {a.seconds} s, medians; "
          f"file in {os.path.dirname(work)}; {'tgt default' if a.defaults else 'tuned'} session parameters; "
          "CPU = target's CPU time per I/O\n")
    print("| workload | tgt IOPS | rtgt IOPS | IOPS rtgt/tgt | tgt MB/s | rtgt MB/s | "
          "tgt p50/p99 us | rtgt p50/p99 us | tgt CPU us/IO | rtgt CPU us/IO | CPU tgt/rtgt |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, _, _, _ in WORKLOADS:
        if name not in results:
            continue
        ti, ri = med(name, "tgt", "iops"), med(name, "rtgt", "iops")
        tc, rc = med(name, "tgt", "cpu_us_per_io"), med(name, "rtgt", "cpu_us_per_io")
        lat = lambda who: f"{fmt(med(name, who, 'p50'))}/{fmt(med(name, who, 'p99'))}"
        print(f"| {name} | {fmt(ti)} | {fmt(ri)} | {fmt(ri / ti if ti and ri else None, 2)} | "
              f"{fmt(med(name, 'tgt', 'mbs'), 1)} | {fmt(med(name, 'rtgt', 'mbs'), 1)} | {lat('tgt')} | {lat('rtgt')} | "
              f"{fmt(tc, 1)} | {fmt(rc, 1)} | {fmt(tc / rc if tc and rc else None, 2)} |")
    variants = [t.name for t in targets[2:]]
    if variants:
        print("\n| workload | target | IOPS | IOPS vs rtgt | p50/p99 us | CPU us/IO |")
        print("|---|---|---|---|---|---|")
        for name, _, _, _ in WORKLOADS:
            if name not in results:
                continue
            ri = med(name, "rtgt", "iops")
            for who in ["rtgt", *variants]:
                vi = med(name, who, "iops")
                print(f"| {name} | {who} | {fmt(vi)} | {fmt(vi / ri if vi and ri else None, 2)} | "
                      f"{fmt(med(name, who, 'p50'))}/{fmt(med(name, who, 'p99'))} | "
                      f"{fmt(med(name, who, 'cpu_us_per_io'), 1)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
