#!/usr/bin/env python3
"""Build the Debian package, install it, and run the installed
rtgtd.service's command lines the way systemd would (Type=notify: wait
for READY=1 before ExecStartPost; ExecStop on the way out), with a
targets.conf of one file LUN on a loopback portal; a libiscsi client then
reads the LUN's inquiry data and writes and reads it back. The package
is removed (purged) at the end. Needs root (dpkg -i); skips without.
usage: scripts/test-deb.py
"""
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def unit_lines(text, key):
    return [l.split("=", 1)[1] for l in text.splitlines() if l.startswith(key + "=")]


def main():
    if os.geteuid() != 0:
        print("test-deb: not root, cannot dpkg -i: skipped")
        return 0
    if subprocess.call(["dpkg", "-s", "rtgt"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) == 0:
        # Never replace (and then purge) an install that was here first.
        print("test-deb: an rtgt package is installed already: skipped")
        return 0
    deb = subprocess.check_output([os.path.join(ROOT, "scripts/build-deb.sh")], text=True).strip()
    deb = os.path.join(ROOT, deb)
    subprocess.check_call(["dpkg", "-i", deb])
    work = tempfile.mkdtemp(prefix="rtgt-deb-")
    child = None
    try:
        for f in ["/usr/sbin/rtgtd", "/usr/sbin/rtgtadm", "/usr/sbin/rtgt-admin",
                  "/lib/systemd/system/rtgtd.service", "/lib/systemd/system/rtgtd@.service",
                  "/etc/rtgt/targets.conf", "/usr/share/man/man8/rtgtd.8.gz",
                  "/usr/share/man/man8/rtgtadm.8.gz", "/usr/share/man/man8/rtgt-admin.8.gz"]:
            assert os.path.exists(f), f"{f} not installed"
        assert os.path.isdir("/var/lib/rtgt")
        man = subprocess.check_output(["sh", "-c", "zcat /usr/share/man/man8/rtgtd.8.gz"], text=True)
        man = man.replace("\\", "")  # roff escapes: \-\-port\-group
        assert "--port-group" in man and "--metrics" in man, "rtgtd(8) lacks its options"
        unit = open("/lib/systemd/system/rtgtd.service").read()
        assert "Type=notify" in unit
        port = free_port()
        disk = os.path.join(work, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(64 << 20)
        iqn = "iqn.2026-12.io.rtgt:deb"
        conf = os.path.join(work, "targets.conf")
        with open(conf, "w") as f:
            f.write(f"<target {iqn}>\n    backing-store {disk}\n</target>\n")
        env = dict(os.environ)
        for kv in unit_lines(unit, "Environment"):
            k, v = kv.split("=", 1)
            env.setdefault(k, v)
        env["TARGETS_CONF"] = conf
        env["TGT_IPC_SOCKET"] = os.path.join(work, "socket")
        notify_path = os.path.join(work, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(15)
        env["NOTIFY_SOCKET"] = notify_path

        def expand(line):
            line = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), line)
            return shlex.split(line.lstrip("-@+"))

        start = expand(unit_lines(unit, "ExecStart")[0])
        assert start[0] == "/usr/sbin/rtgtd", start
        # Never the real 3260: a loopback portal of our own.
        start += ["--iscsi", f"portal=127.0.0.1:{port}", "--data-dir", work]
        child = subprocess.Popen(start, env=env, stderr=open(os.path.join(work, "rtgtd.log"), "w"))
        while True:
            msg = notify.recv(512).decode()
            if "READY=1" in msg.splitlines():
                break
        for line in unit_lines(unit, "ExecStartPost"):
            subprocess.check_call(expand(line), env=env)
        url = f"iscsi://127.0.0.1:{port}/{iqn}/1"
        inq = subprocess.check_output(["iscsi-inq", url], text=True)
        assert "VIRTUAL-DISK" in inq, inq
        subprocess.check_call(["iscsi-ls", "-s", f"iscsi://127.0.0.1:{port}"])
        for line in unit_lines(unit, "ExecStop"):
            subprocess.check_call(expand(line), env=env)
        assert child.wait(timeout=15) == 0, "rtgtd did not stop after ExecStop"
        child = None
        print(f"test-deb: {os.path.basename(deb)} installs, its unit serves {iqn} and stops")
        return 0
    finally:
        if child is not None:
            child.kill()
            child.wait()
        subprocess.call(["dpkg", "--purge", "rtgt"])
        subprocess.call(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
