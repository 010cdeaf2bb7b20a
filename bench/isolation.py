#!/usr/bin/env python3
"""What a hostile tenant can make one botbridge process hold, measured on loopback.

Two floods against the release binary, each on a fresh process with the shipped demo bots:

- async: FLOOD async CSML requests (a `callback_url` whose receiver accepts and never answers, so
  every accepted delivery stays pending) from one credential, as fast as answered; then one request
  from a second credential. Reports what was accepted and refused (by status), resident memory
  before and after, and whether the second credential was still accepted. `--credentials N` spreads
  the flood over N credentials instead, to fill the whole queue and measure memory per pending
  request.
- users: USERS requests with distinct made-up user ids (wrk with a Lua script) against a route with
  a per-user limit, then resident memory and the bucket counters.
- connections: from 7, then 8 loopback source addresses, 600 connections each that hold a request
  in its body (a valid credential, one byte of a 100-byte body); then whether a client from another
  address is still served (the cap is 4,096 connections, 512 per address by default).

Usage: python3 bench/isolation.py [--binary target/release/botbridge] [--flood 10000]
       [--credentials 1] [--delivery-keys 'max_pending_per_host = 20000'] [--users 1000000]
       [--only async|users|connections]
Bounded: fixed counts, each step with a time limit; everything on 127.0.0.1.
"""
import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from bench import free_port, rss_kib  # bench/bench.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb(pid):
    return rss_kib(pid) / 1024


def silent_receiver():
    """A TCP listener that accepts connections and never answers: deliveries stay pending."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    held = []

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1], srv


def config(dirname, ports, credentials, extra=""):
    text = open(os.path.join(ROOT, "proxy.toml")).read()
    text = (text.replace("127.0.0.1:8080", f"127.0.0.1:{ports['chat']}")
            .replace("127.0.0.1:9090", f"127.0.0.1:{ports['admin']}")
            .replace("127.0.0.1:8081", f"127.0.0.1:{ports['demo']}")
            .replace("[server]", f"[server]\npid_file = \"{dirname}/pid\"\nupgrade_sock = \"{dirname}/sock\"", 1)
            .replace('filter = "info"', 'filter = "warn"'))
    for n in range(credentials):
        text += (f"\n[[clients.csml]]\nname = \"tenant-{n}\"\nkey = \"tenant-{n}\"\nauth = \"plain\"\n"
                 f"callback_secret = \"s-{n}\"\ncallback_hosts = [\"127.0.0.1\"]\n"
                 "allow_http_callbacks = true\nallow_private_callbacks = true\n")
    text += (f"\n[delivery]\nspool_dir = \"{dirname}/spool\"\ndead_letter_path = \"{dirname}/dead.jsonl\"\n"
             "deadline_ms = 600000\n" + extra)
    return text


def start(binary, text, dirname, ports):
    path = os.path.join(dirname, "proxy.toml")
    with open(path, "w") as f:
        f.write(text)
    log = open(os.path.join(dirname, "proxy.log"), "w")
    proc = subprocess.Popen([binary, "--config", path], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/healthz", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("the proxy did not start:\n" + open(os.path.join(dirname, "proxy.log")).read())


def post(port, key, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/chat", data=body.encode(),
                                 headers={"content-type": "application/json", "x-api-key": key})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def metric(ports, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def async_flood(binary, flood, credentials, delivery_keys):
    rx_port, rx = silent_receiver()
    dirname = tempfile.mkdtemp(prefix="botbridge-iso-")
    ports = {k: free_port() for k in ("chat", "admin", "demo")}
    text = config(dirname, ports, credentials + 1, delivery_keys.replace(";", "\n") + "\n")
    proc = start(binary, text, dirname, ports)
    try:
        time.sleep(0.5)
        before = rss_mb(proc.pid)
        statuses = {}
        started = time.time()
        lock = threading.Lock()
        per_thread = flood // 8

        def caller(t):
            for i in range(per_thread):
                n = t * per_thread + i
                key = f"tenant-{n % credentials}"
                body = json.dumps({"client": {"user_id": f"u{n}"}, "metadata": {},
                                   "callback_url": f"http://127.0.0.1:{rx_port}/cb/{n}",
                                   "payload": {"content_type": "text", "content": {"text": "flood"}}})
                s = post(ports["chat"], key, body)
                with lock:
                    statuses[s] = statuses.get(s, 0) + 1
                if time.time() - started > 300:
                    return

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.time() - started
        time.sleep(2)  # the bots answer; deliveries connect and wait
        after = rss_mb(proc.pid)
        other = json.dumps({"client": {"user_id": "other"}, "metadata": {},
                            "callback_url": f"http://127.0.0.1:{rx_port}/cb/other",
                            "payload": {"content_type": "text", "content": {"text": "mine"}}})
        other_status = post(ports["chat"], f"tenant-{credentials}", other)
        depth = metric(ports, "botbridge_delivery_queue_depth")
        pending = statuses.get(200, 0)
        print(f"async flood: {flood} requests from {credentials} credential(s) in {took:.1f} s: "
              f"statuses {dict(sorted(statuses.items()))}; queue depth {depth:.0f}")
        print(f"  resident memory {before:.1f} MB -> {after:.1f} MB "
              f"(+{after - before:.1f} MB, {1024 * (after - before) / max(pending, 1):.1f} KB per pending request)")
        print(f"  another credential's async request afterwards: {other_status}")
    finally:
        proc.kill()
        proc.wait()
        rx.close()
        shutil.rmtree(dirname, ignore_errors=True)


# Each run of wrk is told its number (`-- N`), so user ids never repeat across runs.
WRK_SCRIPT = """
counter = 0
init = function(args) run = args[1] end
request = function()
  counter = counter + 1
  local body = '{"client":{"user_id":"made-up-' .. run .. '-' .. counter .. '"},"metadata":{},"payload":{"content_type":"text","content":{"text":"hi"}}}'
  return wrk.format("POST", "/chat", {["content-type"] = "application/json", ["x-api-key"] = "tenant-0"}, body)
end
"""


def users_flood(binary, users):
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the users flood (apt-get install wrk)")
    dirname = tempfile.mkdtemp(prefix="botbridge-iso-")
    ports = {k: free_port() for k in ("chat", "admin", "demo")}
    text = config(dirname, ports, 1) + "\n[limits]\nuser_rate_limit = { requests = 5, per_seconds = 86400 }\n"
    proc = start(binary, text, dirname, ports)
    script = os.path.join(dirname, "users.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    try:
        time.sleep(0.5)
        before = rss_mb(proc.pid)
        sent, run = 0, 0
        started = time.time()
        while sent < users and time.time() - started < 600:
            run += 1
            out = subprocess.run(["wrk", "-t1", "-c32", "-d5s", "-s", script, f"http://127.0.0.1:{ports['chat']}/chat",
                                  "--", str(run)], capture_output=True, text=True, timeout=60).stdout
            m = re.search(r"(\d+) requests in", out)
            sent += int(m.group(1)) if m else 0
        after = rss_mb(proc.pid)
        overflows = metric(ports, "botbridge_rate_limit_bucket_overflows_total")
        time.sleep(11)  # one sweep: the bucket gauge is exact after it
        buckets = metric(ports, "botbridge_rate_limit_local_buckets")
        print(f"users flood: {sent} requests, each a new user id, in {time.time() - started - 11:.0f} s")
        print(f"  resident memory {before:.1f} MB -> {after:.1f} MB (+{after - before:.1f} MB); "
              f"buckets after the sweep {buckets:.0f}; overflow checks {overflows:.0f}")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(dirname, ignore_errors=True)


HELD_HEAD = ("POST /chat HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
             "Authorization: Bearer demo-token\r\nclient-id: demo-client\r\nContent-Length: 100\r\n\r\n{")


def probe(port, source):
    """A new client from `source`: the status of a request to an unknown path, or the error."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    try:
        s.sendall(b"GET /nowhere HTTP/1.1\r\nHost: proxy\r\n\r\n")
        return int(s.recv(64).split()[1])
    except OSError as e:
        return str(e)
    finally:
        s.close()


def connections(binary, addresses):
    """Requests held in their body (valid credential, one byte of 100 sent) from `addresses` loopback
    source addresses, as many as each may open; then whether a new client is still served."""
    dirname = tempfile.mkdtemp(prefix="botbridge-iso-")
    ports = {k: free_port() for k in ("chat", "admin", "demo")}
    proc = start(binary, config(dirname, ports, 0), dirname, ports)
    held = []
    try:
        for a in range(addresses):
            source = f"127.0.0.{a + 2}"
            for _ in range(600):
                s = socket.create_connection(("127.0.0.1", ports["chat"]), timeout=5, source_address=(source, 0))
                s.sendall(HELD_HEAD.encode())
                held.append(s)
        time.sleep(1)
        in_flight = metric(ports, "botbridge_in_flight_requests")
        refused = metric(ports, 'botbridge_client_connections_total{listener="chat",result="refused_per_address"}')
        status = probe(ports["chat"], "127.0.0.200")
        print(f"connections: {addresses} source address(es) x 600 connections holding a body: "
              f"{in_flight:.0f} requests in flight, {refused:.0f} refused per address; a new client: {status}")
    finally:
        for s in held:
            s.close()
        proc.kill()
        proc.wait()
        shutil.rmtree(dirname, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "botbridge"))
    ap.add_argument("--flood", type=int, default=10_000)
    ap.add_argument("--credentials", type=int, default=1)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--only", choices=["async", "users", "connections"])
    ap.add_argument("--delivery-keys", default="",
                    help="extra [delivery] keys, ';'-separated, e.g. 'max_pending_per_host = 20000'")
    args = ap.parse_args()
    if args.only in (None, "async"):
        async_flood(args.binary, args.flood, args.credentials, args.delivery_keys)
    if args.only in (None, "users"):
        users_flood(args.binary, args.users)
    if args.only in (None, "connections"):
        for addresses in (7, 8):
            connections(args.binary, addresses)


if __name__ == "__main__":
    main()
