#!/usr/bin/env python3
"""Where botbridge's memory per idle client connection goes: a heap profile with valgrind's massif.

Runs botbridge (built on the system allocator, so massif sees every allocation) under massif with
its built-in demo bot, opens N keep-alive connections that each make one real Haptik request and
then stay open, and reads the heap snapshot taken with all of them open. Allocation sites holding
about N allocations' worth are per-connection costs: the table gives each site's bytes per
connection, and the function in pingora or botbridge that made it.
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from bench import free_port  # bench/bench.py, beside this file

BODY = b'{"user":{"auth_id":"heap-user"},"message_body":"hello","message_type":0,"business_id":343}'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/sysalloc/release/botbridge")
    ap.add_argument("--connections", type=int, default=1000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="botbridge-heap-")
    port, admin, demo = free_port(), free_port(), free_port()
    conf = os.path.join(work, "proxy.toml")
    with open(conf, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{port}"
threads = 1
pid_file = "{work}/bb.pid"
upgrade_sock = "{work}/bb.sock"
grace_period_seconds = 0
# Every benchmark client comes from 127.0.0.1: no per-address cap.
max_connections_per_address = 0
[admin]
listen = "127.0.0.1:{admin}"
[log]
filter = "warn"
[demo]
listen = "127.0.0.1:{demo}"
api_key = "heap-backend-key"
api_secret = "heap-backend-secret"
[[clients.haptik]]
name = "heap"
client_id = "heap-client"
token = "heap-token"
[[backends]]
name = "bot"
dialect = "csml"
url = "http://127.0.0.1:{demo}/api/chat"
auth = "signed"
api_key = "heap-backend-key"
api_secret = "heap-backend-secret"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "bot"
""")
    out = os.path.join(work, "massif.out")
    proc = subprocess.Popen(["valgrind", "--tool=massif", f"--massif-out-file={out}", "--depth=12",
                             "--threshold=0.2", "--detailed-freq=1", "--max-snapshots=200",
                             args.binary, "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "stderr.log"), "w"))
    request = (b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer heap-token\r\nclient-id: heap-client\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("heap_profile: the proxy did not start under valgrind")
                time.sleep(0.5)
        socks = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(60)
            s.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            assert data.startswith(b"HTTP/1.1 200"), data[:80]
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            while len(rest) < length:
                rest += s.recv(65536)
            socks.append(s)
        time.sleep(3)  # let massif take snapshots with every connection open and idle
        proc.send_signal(2)  # SIGINT: fast stop; massif writes its file at exit
        proc.wait(timeout=60)
        for s in socks:
            s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    report(out, args.connections)


def report(path, n):
    """The snapshot with the most heap; its allocation tree's top-level sites per connection."""
    text = open(path).read()
    snapshots = text.split("snapshot=")[1:]
    best = None
    for snap in snapshots:
        heap = int(re.search(r"mem_heap_B=(\d+)", snap).group(1))
        if "heap_tree=detailed" in snap or "heap_tree=peak" in snap:
            if best is None or heap > best[0]:
                best = (heap, snap)
    heap, snap = best
    # Top-level entries of the tree: lines with one leading space ("  n<k>: <bytes> <where>").
    rows = []
    for line in snap.splitlines():
        m = re.match(r"^ n\d+: (\d+) (?:0x[0-9A-F]+: )?(.*)$", line)
        if m:
            rows.append((int(m.group(1)), m.group(2)))
    print(f"heap with {n} idle connections open: {heap / 1e6:.1f} MB "
          f"({heap / n / 1024:.1f} KiB per connection if all of it were theirs)\n")
    print("| bytes per connection | allocation site |")
    print("|---|---|")
    for size, where in sorted(rows, reverse=True):
        per = size / n
        if per < 64:
            continue
        where = re.sub(r" \(in [^)]*\)$", "", where)
        where = re.sub(r"\{\{closure\}\}", "{closure}", where)
        print(f"| {per:,.0f} | `{where[:150]}` |")


if __name__ == "__main__":
    main()
