#!/usr/bin/env python3
"""Past saturation: goodput and the latency of what is admitted, with and without admission control.

"offered/s" is the rate due; requests due while --max-connections were in flight are not sent and
are counted in the last column, and "refused" is a share of those sent.

`python3 bench/overload.py` builds the open-loop load generator (examples/open_loop.rs) and runs two
botbridge instances with one worker thread each, on the full translating path (a Haptik caller to a
signed CSML bot, a fixed-answer nginx): one with `[server] max_queue_ms = 0` (off, the default), one
with `max_queue_ms = MAX_QUEUE` (20 by default).

First the capacity: the requests/s one worker thread serves (wrk, 50 keep-alive connections,
closed loop). Then, for each instance, an open-loop load of 1x, 2x and 4x that rate: requests are
sent on schedule whatever the answers take, each on an idle keep-alive connection or a new one (up
to `--max-connections` in flight), and each answer's latency counts from when its request was due
(so the proxy's queue shows, and no request waits behind its own connection's last answer). For
each: goodput (2xx answers/s), the share refused with 503, and p50 / p99 of the 2xx answers.

The proxy runs on CPU 0 and everything else (the generator, nginx, wrk) on CPU 1 (`taskset`), and
the proxy gets only `--cpu-share` of its core (a cgroup CPU quota, 3 ms in every 10 ms by default):
the generator must offer 4x what the proxy serves, and on this machine it could not out-send a
whole core. So the proxy's worker thread is the one saturated and its measured wait is its own queue.
Compare the rows with each other.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (HAPTIK_BODY, botbridge_config, fixed_answer_server, free_port, nginx_conf,  # noqa: E402
                   one_url, post_script, run_wrk, wait_port)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = ["Authorization: Bearer bench-token", "client-id: bench-client"]


def build_generator():
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "open_loop"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/examples/open_loop")


def open_loop(generator, port, rate, seconds, connections):
    out = subprocess.run(["taskset", "-c", "1", generator, f"127.0.0.1:{port}", "/chat", str(rate), str(seconds), str(connections),
                          HAPTIK_BODY, *HEADERS], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def cpu_quota(pids, share, period_us=10_000):
    """Puts `pids` in a cgroup (v1 `cpu` or v2) allowed `share` of one CPU; its path."""
    for root, v2 in (("/sys/fs/cgroup/cpu", False), ("/sys/fs/cgroup", True)):
        path = os.path.join(root, f"botbridge-overload-{os.getpid()}")
        try:
            os.makedirs(path, exist_ok=True)
            if v2:
                open(os.path.join(path, "cpu.max"), "w").write(f"{int(share * period_us)} {period_us}")
            else:
                open(os.path.join(path, "cpu.cfs_period_us"), "w").write(str(period_us))
                open(os.path.join(path, "cpu.cfs_quota_us"), "w").write(str(int(share * period_us)))
            for pid in pids:
                open(os.path.join(path, "cgroup.procs"), "w").write(str(pid))
            return path
        except OSError:
            continue
    raise SystemExit("overload: no writable cgroup for a CPU quota (run as root, or --cpu-share 1)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/botbridge"))
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--max-queue", type=int, default=20, help="max_queue_ms of the instance with admission control")
    ap.add_argument("--loads", default="1,2,4", help="multiples of the measured capacity")
    ap.add_argument("--capacity", type=float, default=0,
                    help="the requests/s taken as 1x (default: measured with wrk); give the same to compare builds")
    ap.add_argument("--cpu-share", type=float, default=0.3, help="the share of one CPU the proxy gets")
    ap.add_argument("--max-connections", type=int, default=4000,
                    help="the most requests the generator has in flight (one connection each); a request due "
                         "past it is counted as not sent")
    args = ap.parse_args()
    generator = build_generator()
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    work = tempfile.mkdtemp(prefix="botbridge-overload-")
    bot = free_port()
    nginx = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", nginx_conf(work, "bot", fixed_answer_server(bot), workers=1),
                              "-p", work, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    procs = []
    group = None
    try:
        wait_port(bot)
        instances = {}
        for name, max_queue in (("off", 0), ("on", args.max_queue)):
            port, admin = free_port(), free_port()
            config = botbridge_config(work, name, port, admin, one_url(bot))
            # Idle upstream connections kept: enough that a queue of requests rarely closes and
            # reopens connections to the bot (with 64, 500 in flight churned ~440 connections a
            # round and tripled the CPU per request). With admission control the proxy has far
            # fewer than --max-connections in flight; without it, past 2,048 a few churn.
            config_text = (open(config).read()
                           .replace("[server]\n", f"[server]\nmax_queue_ms = {max_queue}\n", 1)
                           .replace("upstream_pool_size = 64", "upstream_pool_size = 2048"))
            open(config, "w").write(config_text)
            log = open(os.path.join(work, f"{name}.log"), "w")
            procs.append(subprocess.Popen(["taskset", "-c", "0", args.binary, "-c", config], stdout=log, stderr=log))
            wait_port(port)
            instances[name] = port
        if args.cpu_share < 1:
            group = cpu_quota([p.pid for p in procs], args.cpu_share)
        script = post_script(work)
        measured = run_wrk(f"http://127.0.0.1:{instances['off']}/chat", script, 5, 50, pin="1")
        if measured["non2xx"]:
            raise SystemExit(f"overload: {measured['non2xx']} non-2xx answers while measuring capacity:\n{measured['raw']}")
        capacity = args.capacity or measured["rps"]
        print(f"capacity of one worker thread with {args.cpu_share:g} of a CPU (closed loop, 50 connections): "
              f"{measured['rps']:.0f} requests/s; 1x is {capacity:.0f}", flush=True)
        print("| load | admission control | offered/s | goodput/s | refused (503) | 2xx p50 | 2xx p99 | other | not sent |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = []
        for k in [float(x) for x in args.loads.split(",")]:
            for name in ("off", "on"):
                rate = k * capacity
                r = open_loop(generator, instances[name], rate, args.seconds, args.max_connections)
                refused = r["statuses"].get("503", 0)
                other = r["sent"] - sum(r["statuses"].values()) + sum(
                    v for s, v in r["statuses"].items() if s not in ("200", "503"))
                label = "off" if name == "off" else f"max_queue_ms = {args.max_queue}"
                print(f"| {k:g}x | {label} | {rate:.0f} | {r['goodput_per_s']:.0f} | "
                      f"{100 * refused / max(r['sent'], 1):.1f}% | {r['ok_p50_ms']:.1f} ms | {r['ok_p99_ms']:.1f} ms | "
                      f"{other} | {r['not_sent']} |", flush=True)
                rows.append({"load": k, "instance": name, **r})
                time.sleep(1)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        if group:
            try:
                os.rmdir(group)
            except OSError:
                pass
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
