#!/usr/bin/env python3
"""Where a request's CPU goes, natively: perf samples of the proxy under load, by category.

Usage: python3 bench/profile.py [--binary B] [--floor F] [--seconds N]

Runs three proxies one after another, each with one worker thread in front of bench.py's
fixed-answer nginx bot, under `wrk -t1 -c50`: the pingora floor (examples/passthrough_floor),
botbridge with features off (bench.py's plain row) and with features on (a 3-endpoint pool with
health checks, a credential and a per-user limit never hit, the access log at `info`). Each is
sampled with `perf record -F 4999 -p PID` (no call graphs: the cheapest profile) for the measured
seconds; the samples are put in categories by symbol and turned into µs per request (samples /
frequency / requests). perf's own interrupts add to the kernel's share and to the total: compare
the columns with each other, and bench.py's figures for the absolute cost.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (NEVER_HIT, botbridge_config, fixed_answer_server, free_port, nginx_conf,  # noqa: E402
                   one_url, pool_of_three, post_script, run_wrk, wait_port)

FREQ = 4999

# First match wins, in this order. Kernel samples are told apart by perf ("[k]").
CATEGORIES = [
    ("allocator", r"mi_|malloc|free\b|_mi_"),
    ("copies (memcpy, memmove)", r"memmove|memcpy|memset|memcmp"),
    ("clock reads", r"clock_gettime|vdso|Timespec|tokio::time::clock"),
    ("access log", r"log_line|log_writer|tracing|ryu|itoa|timefmt|core::fmt|humantime"),
    ("dialects (JSON read and written)", r"dialect|json_in|json_out|serde_json|csml|haptik|xxh3|hex::"),
    ("SHA-256, HMAC", r"sha2|hmac|digest|subtle"),
    ("limits, metrics", r"governor|dashmap|prometheus|limits::|metrics::"),
    ("pingora HTTP/1, http, bytes", r"pingora|http::|httparse|bytes::|sip::|hash_one|hashbrown"),
    ("tokio", r"tokio|mio"),
    ("libc system call wrappers", r"^__send|__libc_recv|epoll|__libc_|__GI_|pthread"),
    ("botbridge's shell (service, pool, conn, upstream)", r"botbridge"),
]


def categorize(report):
    """perf report lines (samples, dso, [k] or [.], symbol) -> samples per category."""
    cats = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        n, dso, kind, sym = int(m[1]), m[2], m[3], m[4]
        if kind == "k":
            cats["kernel"] += n
            continue
        name = "other" if dso != "[vdso]" else "clock reads"
        if name == "other":
            name = next((c for c, pattern in CATEGORIES if re.search(pattern, sym)), "other")
        cats[name] += n
    return cats


def profile(label, cmd, port, script, seconds, work):
    log = open(os.path.join(work, f"{label}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port)
        run_wrk(f"http://127.0.0.1:{port}/chat", script, 2, 50)
        data = os.path.join(work, f"{label}.data")
        perf = subprocess.Popen(["perf", "record", "-F", str(FREQ), "-o", data, "-p", str(proc.pid),
                                 "--", "sleep", str(seconds)], stderr=subprocess.DEVNULL)
        r = run_wrk(f"http://127.0.0.1:{port}/chat", script, seconds, 50)
        perf.wait()
    finally:
        proc.kill()  # a graceful stop would wait out the floor's grace period
        proc.wait()
    if r["non2xx"]:
        raise SystemExit(f"profile: {label} answered {r['non2xx']} requests with non-2xx")
    report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "-g", "none",
                             "-F", "sample,dso,sym", "--stdio"], capture_output=True, text=True).stdout
    return categorize(report), r["requests"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/botbridge")
    ap.add_argument("--floor", default="target/release/examples/passthrough_floor")
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "perf"):
        if not shutil.which(tool):
            raise SystemExit(f"profile: {tool} is missing")
    work = tempfile.mkdtemp(prefix="botbridge-profile-")
    os.chmod(work, 0o755)
    backend = free_port()
    three = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    script = post_script(work)
    nginx = subprocess.Popen(["nginx", "-c", nginx_conf(work, "backend", fixed_answer_server(backend, three)),
                              "-g", "daemon off;"])
    columns = {}
    try:
        wait_port(backend)
        port = free_port()
        columns["pingora floor"] = profile("floor", [args.floor, f"127.0.0.1:{port}", f"127.0.0.1:{backend}"],
                                           port, script, args.seconds, work)
        for label, features in (("botbridge, features off", False), ("botbridge, features on", True)):
            port, admin = free_port(), free_port()
            path = botbridge_config(work, f"bb-{features}", port, admin,
                                    pool_of_three(backend) if features else one_url(backend),
                                    NEVER_HIT if features else "", "info" if features else "warn")
            columns[label] = profile(str(features), [args.binary, "--config", path], port, script,
                                     args.seconds, work)
    finally:
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(work, ignore_errors=True)
    names = ["kernel"] + [c for c, _ in CATEGORIES] + ["other"]
    print(f"µs of CPU per request by category (perf record -F {FREQ}, {args.seconds} s each, "
          f"one worker thread, wrk -t1 -c50)\n")
    print("| | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    requests = {k: n for k, (_, n) in columns.items()}

    def cells(counts):
        return " | ".join(counts(k) for k in columns)

    def us(k, samples):
        return f"{samples / FREQ / requests[k] * 1e6:.2f}"

    for name in names:
        print(f"| {name} | " + cells(lambda k: us(k, columns[k][0][name])) + " |")
    user = {k: sum(n for name, n in c.items() if name != "kernel") for k, (c, _) in columns.items()}
    print("| **user space** | " + cells(lambda k: f"**{us(k, user[k])}**") + " |")
    print("| **all** | " + cells(lambda k: f"**{us(k, sum(columns[k][0].values()))}**") + " |")


if __name__ == "__main__":
    main()
