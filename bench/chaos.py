#!/usr/bin/env python3
"""Chaos test of async mode: three instances behind haproxy, one Redis, faults while traffic flows.

    python3 bench/chaos.py [--binary target/release/botbridge] [--seconds 120] [--receiver-down 60]

Starts, all on 127.0.0.1, on random free ports in 20000-32000 (below the kernel's ephemeral range):
- `redis-server` (`appendonly yes`, `appendfsync always`) in a temp dir;
- a bot speaking CSML's Chat API (POST /api/chat, "echo: <text>"), which counts how many times it was
  asked each text: every request the driver sends carries a unique text, so a message that reached the
  bot twice is seen;
- three botbridge instances from the shipped proxy.toml, the demo bots replaced by that bot, all on the
  Redis (`[delivery] journal = "redis"`, the default with `[redis]`, `claim_idle_ms = 3000`), each with
  its own journal, spool and dead-letter files and its log in its own temp dir;
- haproxy in front of them (roundrobin, TCP checks, `retries 2`, `option redispatch`: only connection
  failures are retried, so a request that reached an instance is never sent again);
- a callback receiver, which records every POST and answers 200, or is down (its socket closed,
  connections refused) during the receiver fault.

Drives async CSML requests (a unique `request_id` and text each, `callback_url` to the receiver) and
sync ones through haproxy for `--seconds`, while, in order: an instance is SIGKILLed (and restarted a few
seconds later on the same config and dirs), Redis is restarted (`redis-cli shutdown`, then started
on the same dir: the AOF is kept), the receiver is down for `--receiver-down` seconds, and (unless
`--no-second-kill`) a second instance is SIGKILLed during that outage and never restarted: the others
take its jobs over from Redis after `claim_idle_ms`.

`--redis-in-outage` restarts Redis inside the receiver outage instead, just before the second kill:
what that instance journaled in its own file while Redis was away (`on_redis_error = "local"`) moves
to the stream once Redis answers again, so the others take it over when the instance dies.

`--sentinel` runs Redis Sentinel instead of one Redis: a master and a replica (both `appendonly yes`,
`appendfsync always`, each in its own dir) and three Sentinels (`sentinel monitor bbmaster … 2`,
`down-after-milliseconds 1000`, `failover-timeout 4000`); the instances get `sentinels` and
`master_name` instead of `url`. The Redis restart restarts the current master (shut down, started again
at once as master, before the Sentinels think it down), and a "Sentinel failover" fault is added
inside the receiver outage, before the second kill (which waits until that instance's log says Redis
is reachable again, and 2 s more):
`--failover kill` (the default) SIGKILLs the master the Sentinels name and restarts it
`--replica-after` seconds later as a replica of the new master (`--replicaof`); `--failover manual`
asks a Sentinel for `SENTINEL FAILOVER bbmaster` (the old master stays up until the Sentinels demote
it). Every data server is watched by `redis-cli MONITOR` (`monitor.log` in its dir), so the summary
says which writes the old master took after the replica was promoted (lost in the resync), and for
each lost request where its journal writes went; it counts, per instance process, the logs' "the
sentinels name a new redis master: following it".

`--wait-replicas N` sets `[redis.deliveries] wait_replicas = N` on every instance (an entry counts only
once N replicas hold it); the second kill then also waits until that instance holds no job in its
own file (`botbridge_delivery_journal_jobs{store="file"}` is 0) and none of its writes fell short of
replicas for 2 s. `--replicas N` gives the master N replicas (default 1).

Then waits (at most `--drain` seconds) until every accepted async request (answered 200) has its
closing POST (`conversation_end: true`) at the receiver, matched by the `request_id` the accepted
answer carried (the callbacks carry the same). An interrupted notice (an `error` message: the process
died before the bot answered) counts as delivered: the caller is told. Prints a JSON summary and a last
line

    chaos: accepted=N delivered=N lost=0 duplicates_at_receiver=K bot_twice=0 sync_ok=A sync_failed=B interrupted_notices=C

and exits 1 if anything accepted was lost, a text reached the bot twice, or nothing was accepted at all
(2: the set-up failed). The temp dir (every log, journal and config) is kept; its path is printed.
"""
import argparse
import collections
import ctypes
import datetime
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY, SECRET = "demo-key", "demo-secret"
INTERRUPTED = "the proxy stopped before the bot answered"


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Ports and processes
# ---------------------------------------------------------------------------------------------

_used_ports = set()


def pick_port():
    """A random port in 20000-32000 that is free now (children listen on it: never port 0, never the
    kernel's ephemeral range, which it hands out to outgoing connections)."""
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _used_ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise SystemExit("no free port in 20000-32000")


def _die_with_parent():
    """Children get SIGKILL if this script dies (only ever started from the main thread: the signal
    follows the thread that forked)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(argv, log_path, **kw):
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent, **kw)
    finally:
        out.close()


def owns_listener(pid, port):
    """Whether process `pid` holds the listening socket on `port` (None: /proc cannot tell)."""
    try:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if not os.path.exists(table):
                continue
            for line in open(table).read().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
        fds = f"/proc/{pid}/fd"
        for fd in os.listdir(fds):
            try:
                link = os.readlink(os.path.join(fds, fd))
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
        return False
    except OSError:
        return None


def wait_listening(proc, ports, what, log_path, limit=30.0):
    """Waits until `proc` listens on every one of `ports`. False: a port was in use (retry on others)."""
    deadline = time.monotonic() + limit
    while True:
        text = open(log_path, errors="replace").read() if os.path.exists(log_path) else ""
        if "is in use" in text or "Address already in use" in text:
            return False
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}) while starting; see {log_path}:\n{text[-3000:]}")
        ok = True
        for p in ports:
            if owns_listener(proc.pid, p) is False:
                ok = False
                break
            try:
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
            except OSError:
                ok = False
                break
        if ok:
            return True
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start within {limit} s; see {log_path}")
        time.sleep(0.05)


def stop(proc, sig=signal.SIGTERM, wait=10):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# Redis, instances, haproxy
# ---------------------------------------------------------------------------------------------

class Redis:
    """A data server. `monitor`: its commands are recorded by `redis-cli MONITOR` in `monitor.log`."""

    def __init__(self, work, name="redis", monitor=False):
        self.name = name
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, mode=0o700)
        self.port = pick_port()
        self.log = os.path.join(self.dir, "redis.log")
        self.monitor = monitor
        self.monitor_log = os.path.join(self.dir, "monitor.log")
        self.monitor_proc = None
        self.proc = None

    def start(self, replicaof=None):
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir, "--daemonize", "no"]
        if replicaof is not None:
            argv += ["--replicaof", "127.0.0.1", str(replicaof)]
        self.proc = spawn(argv, self.log)
        if not wait_listening(self.proc, [self.port], "redis-server", self.log):
            raise SystemExit(f"redis port {self.port} is in use")
        deadline = time.monotonic() + 20
        while self.cli("PING") != "PONG":  # loading the AOF
            if time.monotonic() > deadline:
                raise SystemExit(f"redis did not answer PING; see {self.log}")
            time.sleep(0.05)
        if self.monitor:
            stop(self.monitor_proc)
            self.monitor_proc = spawn(["redis-cli", "-p", str(self.port), "MONITOR"], self.monitor_log)

    def cli(self, *args):
        try:
            r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return ""
        return r.stdout.strip()

    def info(self, section="replication"):
        return dict(l.split(":", 1) for l in self.cli("INFO", section).splitlines() if ":" in l)

    def role(self):
        return self.info().get("role", "down" if not self.alive() else "?")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def shutdown(self):
        """Graceful: the AOF (fsynced at every write) stays for the next start."""
        self.cli("SHUTDOWN")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stop(self.proc)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


MASTER_NAME = "bbmaster"


def log_time(line):
    """The wall-clock time a botbridge log line starts with (`2026-12-07T09:32:38.033711Z …`)."""
    try:
        stamp = line.split(" ", 1)[0].rstrip("Z")
        return datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return 0.0


class Sentinel:
    def __init__(self, work, i):
        self.name = f"sentinel-{i}"
        self.dir = os.path.join(work, self.name)
        os.makedirs(self.dir, mode=0o700)
        self.port = pick_port()
        self.conf = os.path.join(self.dir, "sentinel.conf")
        self.log = os.path.join(self.dir, "sentinel.log")
        self.proc = None

    def start(self, master_port):
        with open(self.conf, "w") as f:  # the Sentinel rewrites it
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                    f"sentinel failover-timeout {MASTER_NAME} 4000\n"
                    f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        self.proc = spawn(["redis-server", self.conf, "--sentinel"], self.log)
        if not wait_listening(self.proc, [self.port], self.name, self.log):
            raise SystemExit(f"{self.name}: port {self.port} is in use")

    def cli(self, *args):
        try:
            r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return r.stdout.strip()

    def master_port(self):
        lines = self.cli("SENTINEL", "get-master-addr-by-name", MASTER_NAME).splitlines()
        return int(lines[-1]) if len(lines) == 2 and lines[-1].isdigit() else None

    def master_state(self):
        lines = self.cli("SENTINEL", "master", MASTER_NAME).splitlines()
        return dict(zip(lines[0::2], lines[1::2]))


class SentinelSet:
    """A master and `replicas` replicas (`r1`, `r2`, …: their roles change) and three Sentinels."""

    def __init__(self, work, replicas=1):
        self.servers = [Redis(work, f"redis-r{i + 1}", monitor=True) for i in range(replicas + 1)]
        self.sentinels = [Sentinel(work, i) for i in range(3)]

    def start(self):
        first, rest = self.servers[0], self.servers[1:]
        first.start()
        for r in rest:
            r.start(replicaof=first.port)
        for s in self.sentinels:
            s.start(first.port)
        deadline = time.monotonic() + 40
        while True:  # every Sentinel knows the replicas and the two others; the replicas are in sync
            states = [s.master_state() for s in self.sentinels]
            if (all(st.get("num-slaves") == str(len(rest)) and st.get("num-other-sentinels") == "2"
                    for st in states)
                    and all(r.info().get("master_link_status") == "up" for r in rest)):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the sentinels did not settle: {states}; see {self.sentinels[0].log}")
            time.sleep(0.2)

    def master_port(self):
        """The master the Sentinels name (the first that answers)."""
        for s in self.sentinels:
            p = s.master_port()
            if p is not None:
                return p
        return None

    def server(self, port):
        return next((r for r in self.servers if r.port == port), None)

    def master(self):
        return self.server(self.master_port())

    def toml(self):
        urls = ", ".join(f'"redis://127.0.0.1:{s.port}"' for s in self.sentinels)
        return f'sentinels = [{urls}]\nmaster_name = "{MASTER_NAME}"'

    def stop(self):
        for s in self.sentinels:  # first: no failover while the servers stop
            stop(s.proc)
        for r in self.servers:
            if r.alive():
                r.shutdown()
            stop(r.monitor_proc)


def instance_config(work, listen, admin, bot_port, redis_toml, claim_idle_ms, wait_replicas=0):
    text = open(os.path.join(ROOT, "proxy.toml")).read()
    # No demo bots: every backend that pointed at them points at the chaos bot (only demo-bot, the
    # CSML backend of /chat, is used).
    text = re.sub(r"(?m)^\[demo\]\n(?:[a-z_]+ *=.*\n)+", "", text)
    text = (text.replace("127.0.0.1:8080", f"127.0.0.1:{listen}")
            .replace("127.0.0.1:9090", f"127.0.0.1:{admin}")
            .replace("127.0.0.1:8081", f"127.0.0.1:{bot_port}")
            .replace('"docs/demo/', f'"{ROOT}/docs/demo/')
            .replace("[server]", f'[server]\npid_file = "{work}/pid"\nupgrade_sock = "{work}/upgrade.sock"'))
    text += f"""
[delivery]
journal_dir = "{work}/journal"
spool_dir = "{work}/spool"
dead_letter_path = "{work}/dead-letters.jsonl"
claim_idle_ms = {claim_idle_ms}
retry_initial_ms = 100
retry_max_ms = 1000
max_pending_per_credential = 100000
max_pending_per_host = 100000
max_pending_bytes_per_credential = 1073741824

[redis]
{redis_toml}
timeout_ms = 200
"""
    if wait_replicas:
        text += f"\n[redis.deliveries]\nwait_replicas = {wait_replicas}\n"
    return text


class Instance:
    def __init__(self, n, work, binary, bot_port, redis_toml, claim_idle_ms, wait_replicas=0):
        self.n = n
        self.wait_replicas = wait_replicas
        self.name = f"bb{n}"
        self.dir = os.path.join(work, self.name)
        os.makedirs(self.dir, mode=0o700)
        self.binary = binary
        self.bot_port, self.redis_toml, self.claim_idle_ms = bot_port, redis_toml, claim_idle_ms
        self.log = os.path.join(self.dir, "botbridge.log")
        self.config = os.path.join(self.dir, "proxy.toml")
        self.proc = None
        self.port = self.admin = None
        self.pids = []

    def start(self):
        """Starts the process (on fresh ports the first time; on the same ports and dirs after)."""
        restart = self.port is not None
        for _ in range(5):
            if self.port is None:
                self.port, self.admin = pick_port(), pick_port()
            with open(self.config, "w") as f:
                f.write(instance_config(self.dir, self.port, self.admin, self.bot_port, self.redis_toml,
                                        self.claim_idle_ms, self.wait_replicas))
            with open(self.log, "ab") as f:
                f.write(f"==== chaos: starting {self.name} at {time.strftime('%H:%M:%S')}\n".encode())
            env = dict(os.environ)
            env.pop("RUST_LOG", None)
            self.proc = spawn([self.binary, "--config", self.config], self.log, env=env, cwd=ROOT)
            self.pids.append(self.proc.pid)
            if wait_listening(self.proc, [self.port, self.admin], self.name, self.log):
                return
            stop(self.proc, signal.SIGKILL)
            if restart:  # haproxy knows these ports
                raise SystemExit(f"{self.name}: its port was taken while it was down; see {self.log}")
            self.port = None
        raise SystemExit(f"{self.name} could not bind its ports")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def metrics(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
                return r.read().decode()
        except Exception:
            return ""

    def file_jobs(self):
        """Jobs this instance holds journaled only in its own file (None if it cannot be asked)."""
        m = re.search(r'^botbridge_delivery_journal_jobs\{store="file"\} (\d+)', self.metrics(), re.M)
        return int(m.group(1)) if m else None


def start_haproxy(haproxy, work, instances):
    port = pick_port()
    cfg = os.path.join(work, "haproxy.cfg")
    servers = "\n".join(f"    server {i.name} 127.0.0.1:{i.port} check inter 500 fall 2 rise 1" for i in instances)
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 2
    option redispatch
    # Only connection failures are retried: a request that reached an instance is never sent again.
    retry-on conn-failure

frontend chat
    bind 127.0.0.1:{port}
    default_backend botbridge

backend botbridge
    balance roundrobin
{servers}
""")
    path = os.path.join(work, "haproxy.log")
    proc = spawn([haproxy, "-f", cfg, "-db"], path)
    if not wait_listening(proc, [port], "haproxy", path):
        raise SystemExit(f"haproxy's port {port} is in use")
    return proc, port, path


# ---------------------------------------------------------------------------------------------
# The bot and the receiver
# ---------------------------------------------------------------------------------------------

class QuietServer(ThreadingHTTPServer):
    """A peer that dies mid-request (a SIGKILLed instance) is expected here: no traceback for it."""
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class Bot:
    """CSML Chat API: answers "echo: <text>", counting each text."""

    def __init__(self, delay_ms):
        self.counts = collections.Counter()
        self.lock = threading.Lock()
        bot = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    req = json.loads(body)
                except ValueError:
                    req = {}
                text = ((req.get("payload") or {}).get("content") or {}).get("text")
                if text is not None:
                    with bot.lock:
                        bot.counts[text] += 1
                if delay_ms > 0:
                    time.sleep(random.uniform(0, delay_ms) / 1000)
                answer = json.dumps({
                    "request_id": req.get("request_id", "r"),
                    "interaction_id": "i-1",
                    "messages": [{"conversation_id": "c", "direction": "SEND", "interaction_order": 0,
                                  "payload": {"content_type": "text", "content": {"text": f"echo: {text}"}}}],
                    "client": req.get("client", {}),
                    "received_at": "2019-11-16T17:48:26.519Z",
                    "is_authorized": True,
                }).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a):
                pass

        for _ in range(20):
            self.port = pick_port()
            try:
                self.server = QuietServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                continue
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Receiver:
    """Records every callback POST; `down()` closes its socket (connections refused), `up()` reopens it
    on the same port. A POST on a kept-alive connection while down is answered 503 and closed."""

    def __init__(self):
        self.posts = []  # dicts: t, key, request_id, end, messages, status, signed
        self.lock = threading.Lock()
        self.is_down = False
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                ts = self.headers.get("x-botbridge-timestamp", "")
                expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(expected, self.headers.get("x-botbridge-signature", ""))
                try:
                    msg = json.loads(body)
                except ValueError:
                    msg = {}
                status = 503 if rx.is_down else 200
                with rx.lock:
                    rx.posts.append({
                        "t": time.monotonic(), "key": self.headers.get("idempotency-key"),
                        "request_id": msg.get("request_id"), "end": msg.get("conversation_end") is True,
                        "messages": msg.get("messages") or [], "status": status, "signed": signed,
                    })
                self.send_response(status)
                self.send_header("content-length", "0")
                if status != 200:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.end_headers()

            def log_message(self, *a):
                pass

        self.handler = Handler
        for _ in range(20):
            self.port = pick_port()
            try:
                self._open()
                break
            except OSError:
                continue
        self.url = f"http://127.0.0.1:{self.port}/cb"

    def _open(self):
        self.server = QuietServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self):
        self.is_down = True
        self.server.shutdown()
        self.server.server_close()

    def up(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                self._open()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.is_down = False


# ---------------------------------------------------------------------------------------------
# The traffic
# ---------------------------------------------------------------------------------------------

def csml_post(url, body, timeout):
    ts = int(time.time())
    key = f"{KEY}|{ts}"
    sig = "sha256=" + hmac.new(SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "content-type": "application/json", "x-api-key": key, "x-api-signature": sig, "connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Driver:
    def __init__(self, url, callback, run, rate, async_threads, sync_every):
        self.url, self.callback, self.run = url, callback, run
        self.rate, self.async_threads, self.sync_every = rate, async_threads, sync_every
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.async_results = {}  # our request_id -> dict(text, outcome, ack_request_id, t)
        self.sync_results = []  # dicts: text, outcome
        self.threads = []

    def start(self):
        for c in range(self.async_threads):
            t = threading.Thread(target=self.caller, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)

    def caller(self, c):
        interval = self.async_threads / self.rate
        n = 0
        next_at = time.monotonic()
        while not self.stopping.is_set():
            n += 1
            if self.sync_every and n % self.sync_every == 0:
                self.sync_one(c, n)
            else:
                self.async_one(c, n)
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                self.stopping.wait(pause)
            else:
                next_at = time.monotonic()

    def async_one(self, c, n):
        rid = f"chaos-{self.run}-{c}-{n}"
        text = f"msg-{self.run}-{c}-{n}"
        body = {"client": {"user_id": f"chaos-user-{c}-{n % 7}"}, "request_id": rid, "metadata": {},
                "callback_url": self.callback, "payload": {"content_type": "text", "content": {"text": text}}}
        rec = {"text": text, "t": time.monotonic()}
        try:
            status, answer = csml_post(self.url, body, timeout=10)
            if status == 200:
                rec["outcome"] = "accepted"
                try:
                    rec["ack_request_id"] = json.loads(answer).get("request_id")
                except ValueError:
                    rec["ack_request_id"] = None
            else:
                rec["outcome"] = f"http_{status}"
        except socket.timeout:
            rec["outcome"] = "timeout"  # unknown: it may have been accepted
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            rec["outcome"] = "timeout" if isinstance(reason, socket.timeout) else f"error_{type(reason).__name__}"
        with self.lock:
            self.async_results[rid] = rec

    def sync_one(self, c, n):
        text = f"sync-{self.run}-{c}-{n}"
        body = {"client": {"user_id": f"chaos-sync-{c}"}, "metadata": {},
                "payload": {"content_type": "text", "content": {"text": text}}}
        rec = {"text": text}
        try:
            status, answer = csml_post(self.url, body, timeout=30)
            if status == 200:
                rec["outcome"] = "ok" if f"echo: {text}".encode() in answer else "wrong_answer"
            else:
                rec["outcome"] = f"http_{status}"
        except (urllib.error.URLError, OSError) as e:
            rec["outcome"] = f"error_{type(getattr(e, 'reason', e)).__name__}"
        with self.lock:
            self.sync_results.append(rec)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

FOLLOWING = "the sentinels name a new redis master: following it"
MONITOR_LINE = re.compile(r'^(\d+\.\d+) \[\d+ ([^\]]+)\] "([A-Za-z]+)"')
WRITES = {"XADD", "XACK", "XDEL", "XCLAIM", "XAUTOCLAIM", "XGROUP", "SET", "DEL", "HSET", "EXPIRE", "PEXPIRE",
          "EVALSHA", "EVAL", "PUBLISH", "XTRIM", "HDEL", "INCR", "INCRBY", "SETEX", "PSETEX"}


def monitor_lines(server):
    """(wall time, source: a client address or "lua", command, line) of each recorded command."""
    if not os.path.exists(server.monitor_log):
        return []
    out = []
    for line in open(server.monitor_log, errors="replace"):
        m = MONITOR_LINE.match(line)
        if m:
            out.append((float(m.group(1)), m.group(2), m.group(3).upper(), line))
    return out


def sentinel_report(sset, fo, instances, rel, lost=()):
    """The failover's times, the roles now, the instances' "following it" lines (per process), and
    the writes the old master took between the promotion and its demotion (lost in the resync)."""
    following = {}
    for i in instances:
        parts = open(i.log, errors="replace").read().split("==== chaos: starting ")[1:]
        for k, part in enumerate(parts, 1):
            following[f"{i.name}#{k}"] = part.count(FOLLOWING)
    old, new = fo.get("old"), fo.get("new")
    report = {
        "failover": fo.get("mode"), "old_master": old and old.name, "new_master": new and new.name,
        "t_failover": rel(fo.get("at")), "t_promoted": rel(fo.get("promoted")),
        "t_sentinels_name_new": rel(fo.get("named")), "t_demoted": rel(fo.get("demoted")),
        "t_old_restarted_as_replica": rel(fo.get("restarted")),
        "master_now": getattr(sset.master(), "name", None),
        "roles_now": {r.name: r.role() for r in sset.servers},
        "following_new_master": following,
    }
    if old is not None and "promoted" in fo:
        # Until the demotion (manual), or the SIGKILL (kill: nothing after it).
        until = fo.get("demoted") or (fo["at"] if fo.get("mode") == "kill" else time.time())
        window = [(t, src, cmd, line) for t, src, cmd, line in monitor_lines(old)
                  if fo["promoted"] <= t <= until and (src == "lua" or cmd in WRITES)]
        added = sorted({m.group(0) for t, src, cmd, line in window if cmd == "XADD"
                        for m in [re.search(r"chaos-[0-9a-f]+-\d+-\d+", line)] if m})
        report["writes_to_old_master_after_promotion"] = {
            "from": rel(fo["promoted"]), "until": rel(until),
            "commands": dict(collections.Counter(cmd for _, _, cmd, _ in window)),
            "xadd_request_ids": added[:30], "xadd_request_ids_count": len(added),
            "lost_among_them": len(set(added) & set(lost)),
        }
        last = [t for t, _, cmd, _ in monitor_lines(old) if t <= until]
        report["old_master_last_command_before_until"] = rel(max(last)) if last else None
    return report


def journal_trace(sset, rids, rel):
    """Per request id: its journal writes each server's MONITOR recorded (time, source, command), and
    whether the stream on the master now holds an entry of it."""
    if not rids:
        return {}
    found = collections.defaultdict(lambda: collections.defaultdict(list))
    ids = collections.defaultdict(set)  # rid -> stream entry ids (a replica sees the master's XADD with its id)
    lines = {r.name: monitor_lines(r) for r in sset.servers}
    for name, ls in lines.items():
        for t, src, cmd, line in ls:
            for rid in set(re.findall(r"chaos-[0-9a-f]+-\d+-\d+", line)) & rids:
                found[rid][name].append((rel(t), src, cmd))
                m = re.search(r'"XADD" "[^"]*deliveries" "(\d+-\d+)"', line)
                if m:
                    ids[rid].add(m.group(1))
    by_id = {i: rid for rid, s in ids.items() for i in s}
    acks = collections.defaultdict(lambda: collections.defaultdict(list))
    if by_id:
        for name, ls in lines.items():
            for t, src, cmd, line in ls:
                if cmd in ("XACK", "XDEL", "EVALSHA"):
                    for i in set(re.findall(r'"(\d{13}-\d+)"', line)) & by_id.keys():
                        acks[by_id[i]][name].append((rel(t), src, cmd, i))
    master = sset.master()
    entries = master.cli("XRANGE", "botbridge:deliveries", "-", "+") if master else ""
    return {rid: {"journal_writes_seen_by_monitor": {k: v[:8] for k, v in found[rid].items()},
                  "entry_ids_replicated": sorted(ids[rid]),
                  "acks_of_those_entries": {k: v[:6] for k, v in acks[rid].items()},
                  "in_stream_now": rid in entries} for rid in rids}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "botbridge"))
    ap.add_argument("--seconds", type=float, default=120.0, help="how long traffic flows (the faults are spread over it)")
    ap.add_argument("--receiver-down", type=float, default=60.0, help="how long the callback receiver is down")
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second over all callers")
    ap.add_argument("--callers", type=int, default=4, help="caller threads")
    ap.add_argument("--sync-every", type=int, default=5, help="every Nth request of a caller is synchronous (0: none)")
    ap.add_argument("--bot-delay-ms", type=float, default=200.0,
                    help="the bot answers after a random 0..this delay (so a kill finds bots asked and not yet answered)")
    ap.add_argument("--restart-after", type=float, default=3.0, help="seconds between the first kill and the restart")
    ap.add_argument("--claim-idle-ms", type=int, default=3000)
    ap.add_argument("--no-second-kill", action="store_true", help="skip the second SIGKILL (of an instance never restarted)")
    ap.add_argument("--redis-in-outage", action="store_true",
                    help="restart Redis while the receiver is down, before the second kill: what the second "
                         "instance journaled in its own file meanwhile (on_redis_error = \"local\") must have "
                         "moved to Redis for the others to take it over")
    ap.add_argument("--sentinel", action="store_true",
                    help="Redis Sentinel: a master, a replica and three Sentinels, and a Sentinel failover fault")
    ap.add_argument("--failover", choices=("kill", "manual"), default="kill",
                    help="with --sentinel: SIGKILL the master (restarted as a replica --replica-after s later), "
                         "or SENTINEL FAILOVER")
    ap.add_argument("--replicas", type=int, default=1,
                    help="with --sentinel: how many replicas the master has")
    ap.add_argument("--wait-replicas", type=int, default=0,
                    help="[redis.deliveries] wait_replicas for every instance (with --sentinel: 1 makes a "
                         "failover lose nothing the master had not replicated)")
    ap.add_argument("--replica-after", type=float, default=4.0,
                    help="seconds between the master's SIGKILL and its restart as a replica")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the deliveries after the traffic")
    ap.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    args = ap.parse_args()

    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        log(f"no botbridge binary at {binary} (cargo build --release, or --binary)")
        sys.exit(2)
    args.haproxy = shutil.which(args.haproxy) or args.haproxy
    for tool, path in (("haproxy", args.haproxy), ("redis-server", shutil.which("redis-server")),
                       ("redis-cli", shutil.which("redis-cli"))):
        if not path or not os.access(path, os.X_OK):
            log(f"{tool} is not installed (apt-get install {'redis-server' if 'redis' in tool else tool})")
            sys.exit(2)

    work = tempfile.mkdtemp(prefix="botbridge-chaos-")
    run = "%06x" % random.getrandbits(24)
    log(f"work dir (logs, journals, configs; kept): {work}")
    procs_to_stop = []
    events = []
    t0 = time.monotonic()
    t0_wall = time.time()

    def rel(wall):
        return None if wall is None else round(wall - t0_wall, 2)

    def event(what):
        events.append({"t": round(time.monotonic() - t0, 1), "event": what})
        log(what)

    # SIGTERM (a test harness's timeout) ends the children too, via the finally below.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))

    sset = SentinelSet(work, args.replicas) if args.sentinel else None
    redis = None if sset else Redis(work)
    bot = Bot(args.bot_delay_ms)
    rx = Receiver()
    instances = []
    haproxy = None
    fo = {}  # the failover: old, new (Redis), and wall-clock times
    try:
        if sset:
            sset.start()
            r1, rest = sset.servers[0], sset.servers[1:]
            event(f"redis master {r1.name} on {r1.port}, replicas "
                  f"{', '.join(f'{r.name} on {r.port}' for r in rest)}, sentinels on "
                  f"{', '.join(str(x.port) for x in sset.sentinels)}; bot on {bot.port}, receiver on {rx.port}")
            redis_toml = sset.toml()
        else:
            redis.start()
            event(f"redis on {redis.port}, bot on {bot.port}, receiver on {rx.port}")
            redis_toml = f'url = "{redis.url()}"'
        for n in (1, 2, 3):
            inst = Instance(n, work, binary, bot.port, redis_toml, args.claim_idle_ms, args.wait_replicas)
            inst.start()
            instances.append(inst)
            event(f"{inst.name} pid {inst.proc.pid} on {inst.port} (admin {inst.admin}), log {inst.log}")
        haproxy, hport, haproxy_log = start_haproxy(args.haproxy, work, instances)
        event(f"haproxy on {hport}, log {haproxy_log}")
        time.sleep(1.0)  # the first health checks

        driver = Driver(f"http://127.0.0.1:{hport}/chat", rx.url, run, args.rate, args.callers, args.sync_every)
        start = time.monotonic()
        driver.start()
        event("traffic started")

        def at(fraction_or_time):
            until = start + fraction_or_time
            while time.monotonic() < until:
                time.sleep(min(0.1, max(0.0, until - time.monotonic())))

        s = args.seconds
        victim, second = instances[0], instances[1]
        kill_at = 0.15 * s
        redis_at = max(kill_at + args.restart_after + 2, 0.35 * s)
        rx_at = max(redis_at + 3, 0.5 * s)
        rx_back = rx_at + args.receiver_down
        second_at = rx_at + min(args.receiver_down / 2, 10)
        failover_at = redis_at if args.redis_in_outage else rx_at + 1
        state = {}  # monotonic times: redis_back (the restart done), promoted (the failover)

        def kill_first():
            victim.kill()
            event(f"SIGKILL {victim.name} (pid {victim.pids[-1]})")

        def restart_first():
            victim.start()
            event(f"{victim.name} restarted (pid {victim.proc.pid}) on the same config and dirs")

        def restart_redis():
            if args.redis_in_outage:
                state["log_offset"] = os.path.getsize(second.log)
                state["fault_at"] = time.time()
            if sset:
                m = sset.master()
                m.shutdown()
                event(f"redis master {m.name} ({m.port}) shut down (redis-cli shutdown)")
                m.start()  # at once: back before the Sentinels think it down (down-after-milliseconds 1000)
                named = sset.server(sset.master_port())
                event(f"{m.name} started again as master on the same dir (AOF kept); the sentinels name "
                      f"{named.name if named else None}")
            else:
                redis.shutdown()
                event("redis shut down (redis-cli shutdown)")
                time.sleep(1.0)
                redis.start()
                event("redis started again on the same dir (AOF kept)")
            state["redis_back"] = time.monotonic()

        def failover():
            old = sset.master()
            new = None  # the replica the Sentinels promote
            fo.update(old=old, mode=args.failover, at=time.time())
            state["log_offset"] = os.path.getsize(second.log)
            state["fault_at"] = time.time()
            if args.failover == "kill":
                old.kill()
                event(f"Sentinel failover: SIGKILL redis master {old.name} ({old.port})")
            else:
                answer = sset.sentinels[0].cli("SENTINEL", "FAILOVER", MASTER_NAME)
                event(f"Sentinel failover: SENTINEL FAILOVER {MASTER_NAME} at {sset.sentinels[0].name} "
                      f"({answer}); the master was {old.name} ({old.port})")
            if args.failover == "manual":  # the old master stays up until the Sentinels demote it
                def watch_demotion():
                    deadline = time.monotonic() + 90
                    while time.monotonic() < deadline and old.alive():
                        if old.role() == "slave":
                            fo["demoted"] = time.time()
                            event(f"{old.name} ({old.port}) is a replica (demoted by the sentinels)")
                            return
                        time.sleep(0.02)
                threading.Thread(target=watch_demotion, daemon=True).start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if new is None:
                    new = next((r for r in sset.servers if r is not old and r.alive() and r.role() == "master"),
                               None)
                if "promoted" not in fo and new is not None:
                    fo["promoted"] = time.time()
                    fo["new"] = new
                    state["promoted"] = time.monotonic()
                    event(f"{new.name} ({new.port}) is master (promoted)")
                if "promoted" in fo and sset.master_port() == new.port:
                    fo["named"] = time.time()
                    event(f"the sentinels name {new.name} master")
                    return
                time.sleep(0.02)
            event(f"the failover did not complete within 30 s: {fo}")

        def old_master_as_replica():
            old = fo["old"]
            deadline = time.monotonic() + 30
            while sset.master_port() in (None, old.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            new_port = sset.master_port()
            old.start(replicaof=new_port)
            fo["restarted"] = time.time()
            event(f"{old.name} restarted on the same dir as a replica of {new_port} (--replicaof)")

        def kill_second():
            # Not before `second` is back on Redis after the last Redis fault, and 2 s more: what it
            # journaled in its own file meanwhile (on_redis_error = "local") moves to the stream each
            # second once Redis answers; killed before, nobody would deliver it.
            until = start + second_at
            if "redis_back" in state:
                until = max(until, state["redis_back"] + 2)
            back = None
            if "log_offset" in state and not args.wait_replicas:
                while back is None and time.monotonic() < start + rx_back - 2:
                    with open(second.log, errors="replace") as f:
                        f.seek(state["log_offset"])
                        if "redis is reachable" in f.read():
                            back = time.monotonic()
                            break
                    time.sleep(0.05)
                if back is not None:
                    event(f"{second.name} is back on redis (its log says so)")
                    until = max(until, back + 2)
            if "log_offset" in state and args.wait_replicas:
                # After a failover the new master may have too few replicas for a while: the
                # instances journal in their files meanwhile, and move those jobs to the stream once
                # writes are replicated again. Wait for that: no job left in its file, and no write
                # short of replicas in the last 2 s.
                back = None
                while back is None and time.monotonic() < start + rx_back - 2:
                    with open(second.log, errors="replace") as f:
                        f.seek(state["log_offset"])
                        text = f.read()
                    short = [l for l in text.splitlines()
                             if "not replicated in time" in l or "redis is unavailable" in l]
                    quiet = time.time() - max([state["fault_at"]] + [log_time(l) for l in short]) >= 2
                    if quiet and second.file_jobs() == 0:
                        back = time.monotonic()
                        event(f"{second.name} holds no job in its file and its writes are replicated")
                    time.sleep(0.1)
            until = min(until, start + rx_back)
            while time.monotonic() < until:
                time.sleep(0.05)
            second.kill()
            event(f"SIGKILL {second.name} (pid {second.pids[-1]}), not restarted"
                  + ("" if back is not None or "log_offset" not in state else
                     " (its log did not say redis is reachable again since the last redis fault)"))

        def receiver_down():
            rx.down()
            event(f"receiver down for {args.receiver_down} s")

        def receiver_up():
            rx.up()
            event("receiver up")

        plan = [(kill_at, kill_first), (kill_at + args.restart_after, restart_first),
                (rx_at + 1 if args.redis_in_outage else redis_at, restart_redis),
                (rx_at, receiver_down), (rx_back, receiver_up)]
        if sset:
            plan.append((failover_at, failover))
            if args.failover == "kill":
                plan.append((failover_at + args.replica_after, old_master_as_replica))
        if not args.no_second_kill:
            plan.append((second_at, kill_second))
        for t, action in sorted(plan, key=lambda x: x[0]):  # stable: ties in the order above
            at(t)
            action()
        at(s)
        driver.stop()
        event("traffic stopped")

        # --- wait for the deliveries ---
        with driver.lock:
            results = dict(driver.async_results)
            sync = list(driver.sync_results)
        accepted = {rid: r for rid, r in results.items() if r["outcome"] == "accepted"}
        # The callbacks carry the request id of the accepted answer (the caller's own, when kept).
        expect = {(r.get("ack_request_id") or rid): rid for rid, r in accepted.items()}

        def closed():
            with rx.lock:
                return {p["request_id"] for p in rx.posts if p["status"] == 200 and p["end"]}

        drain_start = time.monotonic()
        while time.monotonic() - drain_start < args.drain:
            if set(expect) <= closed():
                break
            time.sleep(0.25)
        drained_in = time.monotonic() - drain_start
        time.sleep(3.0)  # late duplicates
        event(f"drain ended after {drained_in:.1f} s")

        # --- the verdict ---
        with rx.lock:
            posts = list(rx.posts)
        with bot.lock:
            counts = collections.Counter(bot.counts)
        ok_posts = [p for p in posts if p["status"] == 200]
        key_count = collections.Counter(p["key"] for p in ok_posts)
        duplicates = sum(c - 1 for c in key_count.values() if c > 1)
        dup_rids = sorted({p["request_id"] for p in ok_posts if key_count[p["key"]] > 1 and p["request_id"]})
        by_rid = collections.defaultdict(list)
        for p in ok_posts:
            by_rid[p["request_id"]].append(p)
        # Fallback, should the callbacks not carry the accepted answer's request id: the echoed text.
        by_text = {}
        for p in ok_posts:
            for m in p["messages"]:
                t = ((m.get("payload") or {}).get("content") or {}).get("text", "")
                if isinstance(t, str) and t.startswith("echo: "):
                    by_text[t[6:]] = p["request_id"]

        delivered, lost, interrupted, mixed, wrong, out_of_order, by_text_only = [], [], [], [], [], [], []
        for cb_rid, rid in expect.items():
            got = by_rid.get(cb_rid)
            if not got and accepted[rid]["text"] in by_text:
                got = by_rid.get(by_text[accepted[rid]["text"]])
                by_text_only.append(rid)
            if not got or not any(p["end"] for p in got):
                lost.append(rid)
                continue
            delivered.append(rid)
            keys = {p["key"].rsplit(".", 1)[1] for p in got if p["key"]}
            errors = [m for p in got for m in p["messages"]
                      if (m.get("payload") or {}).get("content_type") == "error"]
            if errors:
                interrupted.append(rid)
            if any(k.startswith("e") for k in keys) and any(not k.startswith("e") for k in keys):
                mixed.append(rid)
            if not errors:
                texts = [((m.get("payload") or {}).get("content") or {}).get("text") for p in got for m in p["messages"]]
                if f"echo: {accepted[rid]['text']}" not in texts:
                    wrong.append(rid)
            first = {}
            for p in got:
                first.setdefault(p["key"], p["t"])
            ordered = [first[k] for k in sorted(first, key=lambda k: k.rsplit(".", 1)[1])]
            if ordered != sorted(ordered):
                out_of_order.append(rid)
        twice = {t: c for t, c in counts.items() if c > 1}
        not_acked_rids = set(by_rid) - set(expect)
        ids_kept = sum(1 for rid, r in accepted.items() if r.get("ack_request_id") == rid)
        outcomes = collections.Counter(r["outcome"] for r in results.values())
        sync_outcomes = collections.Counter(r["outcome"] for r in sync)
        sync_ok = sync_outcomes.get("ok", 0)
        sync_failed = len(sync) - sync_ok

        # --- evidence ---
        evidence = {}
        if lost:
            logs = {i.name: open(i.log, errors="replace").read().splitlines() for i in instances}
            logs["haproxy"] = open(haproxy_log, errors="replace").read().splitlines()
            for rid in lost[:10]:
                cb_rid = accepted[rid].get("ack_request_id") or rid
                evidence[rid] = {
                    "text": accepted[rid]["text"],
                    "bot_asked": counts.get(accepted[rid]["text"], 0),
                    "posts_tried": [(p["key"], p["status"]) for p in posts if p["request_id"] == cb_rid],
                    "log_lines": {n: [l for l in ls if rid in l or cb_rid in l][:8] for n, ls in logs.items()},
                }
        sentinel = {}
        if sset:
            sentinel = sentinel_report(sset, fo, instances, rel, lost)
            rids = set(lost) | {t.replace("msg-", "chaos-", 1) for t in twice} | set(mixed) | set(dup_rids[:5])
            journal = journal_trace(sset, rids, rel)
            for rid in (lost + sorted(rids - set(lost)))[:10]:
                ev = evidence.setdefault(rid, {})
                ev.update(journal.get(rid, {}))
                ev["accepted_by"] = [i.name for i in instances if re.search(
                    rf'request_id="{re.escape(rid)}".* status=200 ', open(i.log, errors="replace").read())]
                ev["in_local_journal_file_of"] = [i.name for i in instances if any(
                    rid.encode() in open(os.path.join(i.dir, "journal", f), "rb").read()
                    for f in (os.listdir(os.path.join(i.dir, "journal")) if os.path.isdir(os.path.join(i.dir, "journal")) else []))]
                if rid not in lost:
                    ev["why"] = "reached the bot twice, answer and notice both, or a duplicate at the receiver"
        metrics = {}
        for i in instances:
            if i.alive():
                metrics[i.name] = [l for l in i.metrics().splitlines() if not l.startswith("#") and not l.endswith(" 0") and re.search(
                    r"journal_recovered|journal_writes|journal_damaged|redis_fallbacks|async_requests_total|dead_letter", l)]
        dead_letters = {}
        for i in instances:
            path = os.path.join(i.dir, "dead-letters.jsonl")
            dead_letters[i.name] = sum(1 for _ in open(path)) if os.path.exists(path) else 0
        master = sset.master() if sset else redis
        stream = {"xlen": master.cli("XLEN", "botbridge:deliveries"),
                  "pending": master.cli("XPENDING", "botbridge:deliveries", "botbridge").splitlines()[:1]}
        if sset:
            stream["on"] = master.name
            stream["xlen_per_server"] = {r.name: r.cli("XLEN", "botbridge:deliveries") for r in sset.servers}

        summary = {
            "work_dir": work,
            "logs": {**{i.name: i.log for i in instances}, "haproxy": haproxy_log,
                     **({r.name: r.log for r in sset.servers} if sset else {"redis": redis.log}),
                     **({s_.name: s_.log for s_ in sset.sentinels} if sset else {})},
            "settings": {"seconds": s, "receiver_down": args.receiver_down, "rate": args.rate,
                         "callers": args.callers, "sync_every": args.sync_every, "bot_delay_ms": args.bot_delay_ms,
                         "claim_idle_ms": args.claim_idle_ms, "wait_replicas": args.wait_replicas, "second_kill": not args.no_second_kill,
                         "redis_in_outage": args.redis_in_outage, "sentinel": args.sentinel,
                         "failover": args.failover if args.sentinel else None},
            "events": events,
            "async": {
                "sent": len(results), "outcomes": dict(outcomes), "accepted": len(accepted),
                "caller_request_id_kept": f"{ids_kept}/{len(accepted)}",
                "delivered": len(delivered), "lost": len(lost), "lost_ids": lost[:50],
                "interrupted_notices": len(interrupted), "matched_by_text_only": len(by_text_only),
                "mixed_answer_and_notice": mixed[:20], "wrong_content": wrong[:20],
                "out_of_order_within_request": out_of_order[:20],
                "delivered_but_not_accepted": len(not_acked_rids),
                "drain_seconds": round(drained_in, 1),
            },
            "receiver": {
                "posts": len(posts), "answered_200": len(ok_posts), "refused_while_down": len(posts) - len(ok_posts),
                "duplicates_at_receiver": duplicates, "duplicate_request_ids": dup_rids[:20], "bad_signatures": sum(1 for p in posts if not p["signed"]),
            },
            "bot": {"texts": len(counts), "asked": sum(counts.values()), "bot_twice": len(twice),
                    "bot_twice_texts": dict(list(twice.items())[:20])},
            "sync": {"sent": len(sync), "outcomes": dict(sync_outcomes)},
            "redis_stream": stream,
            "sentinel": sentinel,
            "dead_letters": dead_letters,
            "metrics": metrics,
            "evidence": evidence,
        }
        print(json.dumps(summary, indent=2))
        for i in instances:
            print(f"log {i.name}: {i.log}")
        print(f"log haproxy: {haproxy_log}")
        if sset:
            w = sentinel.get("writes_to_old_master_after_promotion", {})
            print(f"sentinel: failover={args.failover} {sentinel.get('old_master')}->{sentinel.get('new_master')} "
                  f"promoted_at={sentinel.get('t_promoted')} demoted_at={sentinel.get('t_demoted')} "
                  f"following_new_master={sentinel['following_new_master']} "
                  f"old_master_writes_after_promotion={w.get('commands', {})} "
                  f"lost_written_there={w.get('lost_among_them')}")
        print(f"chaos: accepted={len(accepted)} delivered={len(delivered)} lost={len(lost)} "
              f"duplicates_at_receiver={duplicates} bot_twice={len(twice)} sync_ok={sync_ok} "
              f"sync_failed={sync_failed} interrupted_notices={len(interrupted)}", flush=True)
        failed = bool(lost) or bool(twice) or not accepted
    finally:
        for inst in instances:  # all at once, then wait for each (a graceful stop takes a few seconds)
            if inst.alive():
                inst.proc.send_signal(signal.SIGTERM)
        for inst in instances:
            stop(inst.proc)
        stop(haproxy)
        if sset:
            sset.stop()
        elif redis.proc is not None and redis.proc.poll() is None:
            redis.shutdown()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
