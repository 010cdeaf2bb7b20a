#!/usr/bin/env python3
"""Async mode, measured: delivery latency and throughput of CSML callbacks on loopback.

Starts the botbridge binary in front of its built-in demo CSML bot (three messages per answer, so
four POSTs per request with the closing one) and a callback receiver (a threaded Python HTTP server
answering 200), sends REQUESTS async requests from CALLERS threads, and records when each delivery
arrives. Bounded: a fixed number of requests, and a time limit.

- Latency of a delivery: from the moment the caller got its immediate answer to the moment the
  receiver got that POST (so it includes the bot exchange, as a caller experiences it). p50 and p99
  over every delivery, and over the closing POSTs (a whole answer delivered).
- Throughput: deliveries per second between the first request sent and the last delivery received.
- The caller's answer: how long the immediate (accepted) answer takes, p50 and p99: what journaling
  a request before answering adds (`--journal off|file|file-nosync|redis|redis-wait`; `redis` starts a
  `redis-server` of its own, with `appendonly yes` and `appendfsync everysec`; `redis-wait` adds a
  replica of it and `[redis.deliveries] wait_replicas = 1`).

The receiver, the callers and the proxy share this machine's cores: the figures are an upper bound
on latency and a lower bound on throughput for a receiver on another host.

Usage: python3 bench/async_delivery.py [--binary target/release/botbridge] [--requests 2000] [--callers 8] [--pace 50]
       [--journal off|file|file-nosync|redis|redis-wait] [--fast [--seconds 10]]
Throughput: unpaced (the queue fills, latency then includes the wait in it). Latency: paced below it.

`--fast` measures throughput only, with peers that are not the limit: wrk sends the requests (a
fresh request id each, signed for the second it is sent) and nginx is the receiver (`return 200`);
deliveries per second are read from the proxy's `botbridge_deliveries_total{result="delivered"}`
while the queue stays full (from the 2nd second of wrk's run to its end). The Python receiver and
callers of the default mode hold about 2,000 deliveries/s on this machine themselves.
"""
import argparse
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import nginx_conf  # noqa: E402  (bench/bench.py, beside this file)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "botbridge"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--limit", type=float, default=120.0, help="seconds before giving up")
    ap.add_argument("--pace", type=float, default=0.0,
                    help="requests per second over all callers (0: as fast as they are answered, which measures "
                         "throughput; latency then includes the wait in the queue)")
    ap.add_argument("--journal", default="file", choices=["off", "file", "file-nosync", "redis", "redis-wait"],
                    help="where accepted requests are journaled before they are answered")
    ap.add_argument("--fast", action="store_true", help="throughput only, with wrk as callers and nginx as receiver")
    ap.add_argument("--seconds", type=int, default=10, help="--fast: how long wrk sends")
    args = ap.parse_args()
    if args.fast and args.seconds < 4:
        ap.error("--fast needs --seconds 4 or more (the rate is read from the 2nd second on)")

    arrivals = {}  # idempotency key -> (arrival time, request id, closing?)
    lock = threading.Lock()

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            now = time.monotonic()
            msg = json.loads(body)
            with lock:
                arrivals[self.headers["idempotency-key"]] = (now, msg["request_id"], msg.get("conversation_end") is True)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    work = tempfile.mkdtemp(prefix="botbridge-async-bench-")
    os.chmod(work, 0o755)  # nginx workers run unprivileged
    nginx = None
    if args.fast:
        rx_port = free_port()
        nginx = subprocess.Popen(["nginx", "-c", receiver_conf(work, rx_port), "-g", "daemon off;"])
        callback = f"http://127.0.0.1:{rx_port}/cb"
    else:
        rx = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        rx.daemon_threads = True
        threading.Thread(target=rx.serve_forever, daemon=True).start()
        callback = f"http://127.0.0.1:{rx.server_address[1]}/cb"

    listen, admin, demo = free_port(), free_port(), free_port()
    config = open(os.path.join(ROOT, "proxy.toml")).read()
    config = (config.replace("127.0.0.1:8080", f"127.0.0.1:{listen}").replace("127.0.0.1:9090", f"127.0.0.1:{admin}")
              .replace("127.0.0.1:8081", f"127.0.0.1:{demo}")
              .replace("[server]", f'[server]\npid_file = "{work}/pid"\nupgrade_sock = "{work}/sock"')
              .replace('filter = "info"', 'filter = "warn"'))
    config += f'\n[delivery]\nspool_dir = "{work}/spool"\ndead_letter_path = "{work}/dead.jsonl"\njournal_dir = "{work}/journal"\n'
    # One credential sends every request here: its own share of the queue is the whole queue.
    config += 'max_pending_per_credential = 10000\nmax_pending_bytes_per_credential = 134217728\n'
    redis = replica = None
    if args.journal == "off":
        config += 'journal = "off"\n'
    elif args.journal == "file-nosync":
        config += 'journal = "file"\njournal_fsync = false\n'
    elif args.journal in ("redis", "redis-wait"):
        rport = free_port()
        server = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                  "--appendfsync", "everysec"]
        redis = subprocess.Popen(server + ["--port", str(rport), "--dir", work],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        config += f'journal = "redis"\n\n[redis]\nurl = "redis://127.0.0.1:{rport}/0"\n'
        if args.journal == "redis-wait":
            rdir = os.path.join(work, "replica")
            os.makedirs(rdir)
            replica = subprocess.Popen(server + ["--port", str(free_port()), "--dir", rdir,
                                                 "--replicaof", "127.0.0.1", str(rport)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while b"state=online" not in subprocess.run(
                    ["redis-cli", "-p", str(rport), "INFO", "replication"], capture_output=True).stdout:
                if time.time() > deadline:
                    sys.exit("the replica did not come online")
                time.sleep(0.1)
            config += "\n[redis.deliveries]\nwait_replicas = 1\n"
    path = os.path.join(work, "proxy.toml")
    open(path, "w").write(config)
    proc = subprocess.Popen([args.binary, "--config", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)
                break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit("botbridge did not start")
                time.sleep(0.1)

        if args.fast:
            print(json.dumps(fast(args, work, listen, admin, callback), indent=2))
            return
        acked = {}  # request id -> time the caller got its answer
        answered_ms = []  # how long each immediate answer took
        per_caller = args.requests // args.callers

        def caller(c):
            for i in range(per_caller):
                ts = int(time.time())
                key = f"demo-key|{ts}"
                sig = "sha256=" + hmac.new(b"demo-secret", key.encode(), hashlib.sha256).hexdigest()
                rid = f"bench-{c}-{i}"
                body = json.dumps({"client": {"user_id": f"user-{c}-{i % 50}"}, "request_id": rid, "callback_url": callback,
                                   "payload": {"content_type": "text", "content": {"text": "hello"}}}).encode()
                req = urllib.request.Request(f"http://127.0.0.1:{listen}/chat", data=body, method="POST", headers={
                    "content-type": "application/json", "x-api-key": key, "x-api-signature": sig})
                sent_at = time.monotonic()
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 200
                    r.read()
                with lock:
                    acked[rid] = time.monotonic()
                    answered_ms.append((acked[rid] - sent_at) * 1000)
                if args.pace > 0:
                    time.sleep(args.callers / args.pace)

        start = time.monotonic()
        threads = [threading.Thread(target=caller, args=(c,)) for c in range(args.callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = per_caller * args.callers
        expected = sent * 4
        limit = time.monotonic() + args.limit
        while time.monotonic() < limit:
            with lock:
                if len(arrivals) >= expected:
                    break
            time.sleep(0.05)
        with lock:
            got = dict(arrivals)
        last = max(a[0] for a in got.values())
        lat = [(a[0] - acked[a[1]]) * 1000 for a in got.values() if a[1] in acked]
        closing = [(a[0] - acked[a[1]]) * 1000 for a in got.values() if a[2] and a[1] in acked]
        result = {
            "requests": sent,
            "deliveries_expected": expected,
            "deliveries_received": len(got),
            "throughput_deliveries_per_s": round(len(got) / (last - start), 1),
            "latency_ms_p50": round(percentile(lat, 50), 2),
            "latency_ms_p99": round(percentile(lat, 99), 2),
            "whole_answer_ms_p50": round(percentile(closing, 50), 2),
            "whole_answer_ms_p99": round(percentile(closing, 99), 2),
            "answer_ms_p50": round(percentile(answered_ms, 50), 3),
            "answer_ms_p99": round(percentile(answered_ms, 99), 3),
            "journal": args.journal,
            "callers": args.callers,
            "pace_requests_per_s": args.pace or "unpaced",
        }
        print(json.dumps(result, indent=2))
        if len(got) < expected:
            sys.exit(f"only {len(got)} of {expected} deliveries arrived within {args.limit} s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for server in (replica, redis, nginx):
            if server:
                server.terminate()
                server.wait(timeout=10)
        if not args.fast:
            rx.shutdown()


def receiver_conf(work, port):
    """nginx answering 200 to every delivery (its body read and dropped); the config's path."""
    return nginx_conf(work, "receiver", f"server {{ listen 127.0.0.1:{port}; location / {{ return 200; }} }}")


def delivered(admin):
    """The proxy's count of messages delivered so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('botbridge_deliveries_total{result="delivered"}'):
                return float(line.split()[-1])
    return 0.0


def fast(args, work, listen, admin, callback):
    """--fast: wrk's callers for args.seconds; the deliveries per second while the queue is full."""
    # The demo CSML caller's signature covers `key|unix seconds`: one per second of the run, made here.
    now = int(time.time())
    sigs = ",".join(f'[{t}] = "sha256={hmac.new(b"demo-secret", f"demo-key|{t}".encode(), hashlib.sha256).hexdigest()}"'
                    for t in range(now - 5, now + args.seconds + 60))
    script = os.path.join(work, "async.lua")
    with open(script, "w") as f:
        f.write(f"""
local sigs = {{ {sigs} }}
local n = 0
local prefix = "{os.getpid()}-{now}"
request = function()
  n = n + 1
  local t = os.time()
  local body = '{{"client":{{"user_id":"user-' .. (n % 50) .. '"}},"request_id":"fast-' .. prefix .. '-' .. n ..
    '","callback_url":"{callback}","payload":{{"content_type":"text","content":{{"text":"hello"}}}}}}'
  return wrk.format("POST", "/chat", {{["content-type"] = "application/json", ["x-api-key"] = "demo-key|" .. t,
    ["x-api-signature"] = sigs[t]}}, body)
end
""")
    samples = []

    def sample():
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            samples.append((time.monotonic(), delivered(admin)))
            time.sleep(0.5)
    sampler = threading.Thread(target=sample)
    sampler.start()
    out = subprocess.run(["wrk", "-t1", f"-c{args.callers}", f"-d{args.seconds}s", "-s", script,
                          f"http://127.0.0.1:{listen}/chat"], capture_output=True, text=True).stdout
    sampler.join()
    steady = [s for s in samples if s[0] - samples[0][0] >= 2]
    (t1, d1), (t2, d2) = steady[0], steady[-1]
    import re
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "mode": "fast (wrk callers, nginx receiver)",
        "journal": args.journal,
        "callers": args.callers,
        "seconds": args.seconds,
        "requests": requests,
        "refused_non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "throughput_deliveries_per_s": round((d2 - d1) / (t2 - t1), 1),
    }


if __name__ == "__main__":
    main()
