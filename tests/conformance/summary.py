#!/usr/bin/env python3
"""Classify each iscsi-test-cu test of a verbose log as pass, skip or fail.

CUnit counts a skipped test as passed; this splits those out so the real
coverage shows. Usage: summary.py LOG [--list] [--floor N] [--known FILE]
With --floor, exits 1 when fewer than N tests pass. With --known, exits 1
when a test fails that FILE does not list (one `Suite.Test` per line, each
with the reason it is expected to fail after a `#`).
"""
import re
import sys


def verdict(lines):
    body = "\n".join(lines)
    # CUnit prints its verdict as a bare word right after the test name;
    # messages in brackets ("[FAILED] PRIN ..." from the suite's teardown on
    # the second path, "[SKIPPED]") may follow on the same line and are not
    # the test's verdict.
    m = re.search(r"(?<!\[)\b(passed|FAILED)\b(?!\])", body)
    if m is None or m.group(1) == "FAILED":
        return "fail"
    return "skip" if "[SKIPPED]" in body[: m.start()] else "pass"


def classify(text):
    res, seen, suite, cur, buf = {}, {}, None, None, []
    for line in text.splitlines():
        m = re.match(r"^Suite: (\S+)", line)
        if m:
            seen[m.group(1)] = seen.get(m.group(1), 0) + 1
            suite = f"{m.group(1)}#{seen[m.group(1)]}"
            continue
        m = re.match(r"^  Test: (.+?) \.\.\.(.*)$", line)
        if m:
            if cur:
                res[cur] = verdict(buf)
            cur = f"{suite}.{m.group(1)}"
            buf = [m.group(2)]
            continue
        if cur is not None:
            buf.append(line)
    if cur:
        res[cur] = verdict(buf)
    return res


def union(logs):
    """Each test's best verdict over several runs (configurations)."""
    rank = {"pass": 2, "fail": 1, "skip": 0}
    best = {}
    for log in logs:
        for k, v in classify(open(log, errors="replace").read()).items():
            name = re.sub(r"#\d+\.", ".", k)
            if name not in best or rank[v] > rank[best[name]]:
                best[name] = v
    return best


def main():
    if sys.argv[1] == "--union":
        # summary.py --union LOG... --floor N: distinct tests passing in
        # at least one of the runs.
        logs = [a for a in sys.argv[2:] if not a.startswith("--") and not a.isdigit()]
        best = union(logs)
        n = sum(1 for v in best.values() if v == "pass")
        print(f"conformance: {n} distinct tests pass over {len(logs)} configurations")
        floor = int(sys.argv[sys.argv.index("--floor") + 1]) if "--floor" in sys.argv else 0
        if n < floor:
            print(f"conformance: below the union floor of {floor}")
            return 1
        return 0
    res = classify(open(sys.argv[1], errors="replace").read())
    counts = {k: sum(1 for v in res.values() if v == k) for k in ("pass", "skip", "fail")}
    if "--list" in sys.argv:
        for k in sorted(res):
            print(res[k], k)
    print(f"conformance: tests {len(res)} pass {counts['pass']} skip {counts['skip']} fail {counts['fail']}")
    status = 0
    if "--floor" in sys.argv:
        floor = int(sys.argv[sys.argv.index("--floor") + 1])
        if counts["pass"] < floor:
            print(f"conformance: {counts['pass']} passed, below the floor of {floor}")
            status = 1
    if "--known" in sys.argv:
        path = sys.argv[sys.argv.index("--known") + 1]
        known = {
            line.split("#")[0].strip()
            for line in open(path)
            if line.split("#")[0].strip()
        }
        for k in sorted(res):
            name = re.sub(r"#\d+\.", ".", k)
            if res[k] == "fail" and name not in known:
                print(f"conformance: {name} failed, and is not a known failure")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
