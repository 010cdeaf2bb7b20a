#!/usr/bin/env python3
"""Instructions per request of botbridge's full translating path, counted by valgrind's callgrind.

The setup of bench/bench.py (a fixed-answer nginx backend with the 600-byte CSML answer; botbridge
with one worker thread taking a Haptik request with Bearer + client-id, signing it with HMAC for the
CSML backend and translating the answer back), with botbridge under `valgrind --tool=callgrind`.
A client here sends a warm-up of requests, then callgrind's counters are zeroed (`callgrind_control
-z`), then a fixed number of requests is sent over the same keep-alive connections, each answer
checked for 200, and the counters dumped (`callgrind_control -d`). Prints the proxy's user-space
instructions (Ir, all its threads) divided by the requests. Unlike CPU time on a shared VM this
repeats run to run to about 0.1%, so it shows a change's cost.
"""
import argparse
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

from bench import CSML_ANSWER, HAPTIK_BODY, botbridge_config, one_url, pool_of_three  # bench/bench.py, beside this file


# The same answer as CSML_ANSWER (a text, a question with two buttons) from a Lex V2 bot and from a
# Dialogflow CX agent, for --bot lex and --bot dialogflow.
LEX_ANSWER = json.dumps({"messages": [
    {"contentType": "PlainText", "content": "Your order ships tomorrow."},
    {"contentType": "ImageResponseCard", "imageResponseCard": {"title": "Anything else?", "buttons": [
        {"text": "Yes", "value": "yes"}, {"text": "No", "value": "no"}]}}],
    "sessionState": {"dialogAction": {"type": "ElicitIntent"}}, "sessionId": "s"})
DIALOGFLOW_ANSWER = json.dumps({"responseId": "r", "queryResult": {"responseMessages": [
    {"text": {"text": ["Your order ships tomorrow."]}}, {"text": {"text": ["Anything else?"]}},
    {"payload": {"richContent": [[{"type": "chips", "options": [{"text": "Yes"}, {"text": "No"}]}]]}}]}})
TOKEN_ANSWER = json.dumps({"access_token": "bench-access-token", "expires_in": 3600, "token_type": "Bearer"})
FIXTURE_KEY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "dialogflow", "test-key.pem")


def bot_backend(kind, work, backend):
    """The [[backends]] table of the bot `kind` at `backend`: the bench's signed CSML bot, a Lex bot
    (every request signed with SigV4), or a Dialogflow agent (an access token minted at /token)."""
    if kind == "lex":
        return f"""[[backends]]
name = "bot"
dialect = "lex-v2"
url = "http://127.0.0.1:{backend}"
region = "us-east-1"
bot_id = "BENCHBOT01"
bot_alias_id = "TSTALIASID"
locale_id = "en_US"
access_key_id = "AKIDBENCH"
secret_access_key = "bench-secret"
"""
    sa = os.path.join(work, "service-account.json")
    with open(sa, "w") as f:
        json.dump({"client_email": "bench@bench.iam.gserviceaccount.com", "private_key": open(FIXTURE_KEY).read(),
                   "token_uri": f"http://127.0.0.1:{backend}/token"}, f)
    return f"""[[backends]]
name = "bot"
dialect = "dialogflow-cx"
url = "http://127.0.0.1:{backend}"
project = "bench"
location = "global"
agent = "bench-agent"
language_code = "en"
credentials_file = "{sa}"
"""


def with_bot(conf, kind, work, backend):
    """The bench config with its CSML bot replaced by `kind`'s."""
    if kind == "csml":
        return
    text = open(conf).read()
    text = text[:text.index("[[backends]]")] + bot_backend(kind, work, backend)
    with open(conf, "w") as f:
        f.write(text)


def token_fetches(admin):
    """botbridge_token_fetches_total{result="ok"} of the bench's bot, from the admin listener."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('botbridge_token_fetches_total{backend="bot",result="ok"}'):
                return int(float(line.split()[-1]))
    return 0


# Two buckets per request (the credential's and the user's), never hit: what a limit costs.
LIMITS = """[limits]
rate_limit = { requests = 1000000, per_seconds = 1, burst = 4000000000 }
user_rate_limit = { requests = 1000000, per_seconds = 1, burst = 4000000000 }"""


def free_ports(n):
    """n free loopback ports below 32768 (outside Linux's ephemeral range)."""
    ports = []
    while len(ports) < n:
        p = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        if p not in ports:
            ports.append(p)
    return ports


def wait_port(port, proc, log, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"callgrind: nothing listens on {port}\n{open(log).read()[-3000:]}")


def drive(socks, count):
    """Send exactly `count` requests over the keep-alive connections `socks`, one in flight on each;
    every answer must be a 200 (read to its Content-Length before the next request on its connection)."""
    req = (f"POST /chat HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           f"Authorization: Bearer bench-token\r\nclient-id: bench-client\r\n"
           f"Content-Length: {len(HAPTIK_BODY)}\r\n\r\n{HAPTIK_BODY}").encode()
    sel = selectors.DefaultSelector()
    sent = done = 0
    for s in socks[:count]:
        s.sendall(req)
        sent += 1
        sel.register(s, selectors.EVENT_READ, bytearray())
    while done < count:
        events = sel.select(timeout=60)
        if not events:
            raise SystemExit(f"callgrind: no answer in 60 s ({done} of {count} answered)")
        for key, _ in events:
            s, buf = key.fileobj, key.data
            data = s.recv(65536)
            if not data:
                raise SystemExit("callgrind: botbridge closed a connection")
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = bytes(buf[:end])
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if not m:
                raise SystemExit(f"callgrind: answer without content-length: {head!r}")
            if len(buf) < end + 4 + int(m.group(1)):
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"callgrind: answer {head[:40]!r}, not 200: {bytes(buf)[-300:]!r}")
            del buf[:]
            done += 1
            if sent < count:
                s.sendall(req)
                sent += 1
            else:
                sel.unregister(s)
    sel.close()


def callgrind_control(*args):
    r = subprocess.run(["callgrind_control", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"callgrind: callgrind_control {' '.join(args)} failed:\n{r.stdout}{r.stderr}")


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"callgrind: no totals in {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", help="the botbridge binary to measure")
    ap.add_argument("label", nargs="?", default="", help="a name for the result line")
    ap.add_argument("--requests", type=int, default=20000, help="counted requests")
    ap.add_argument("--warmup", type=int, default=2000, help="requests before the counters are zeroed")
    ap.add_argument("--connections", type=int, default=10, help="keep-alive connections, one request in flight on each")
    ap.add_argument("--out", help="keep the callgrind dump here (for callgrind_annotate)")
    ap.add_argument("--limits", action="store_true",
                    help="give the caller a credential and a per-user rate limit that are never hit")
    ap.add_argument("--log", default="warn",
                    help="botbridge's [log] filter: 'info' writes the access line of every request (the "
                         "default of a shipped config), to a file here")
    ap.add_argument("--bot", choices=["csml", "lex", "dialogflow"], default="csml",
                    help="the bot behind: the signed CSML bot (HMAC), a Lex V2 bot (SigV4 over the whole "
                         "request) or a Dialogflow CX agent (an OAuth2 token minted once, then reused)")
    ap.add_argument("--pool", action="store_true",
                    help="the bot as bench.py's features-on pool: three endpoints (127.0.0.1, .2, .3) with "
                         "HTTP health checks every second")
    ap.add_argument("--floor", action="store_true",
                    help="BINARY is the pingora floor (examples/passthrough_floor: LISTEN BACKEND), "
                         "which forwards the body as is: the plumbing's own count")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    label = args.label or binary

    work = tempfile.mkdtemp(prefix="botbridge-callgrind-")
    os.chmod(work, 0o755)  # nginx workers run unprivileged
    log = os.path.join(work, "stderr.log")
    procs, socks = [], []
    try:
        backend, bb_port, bb_admin = free_ports(3)
        answer = {"csml": CSML_ANSWER, "lex": LEX_ANSWER, "dialogflow": DIALOGFLOW_ANSWER}[args.bot]
        answer = answer.replace("'", "\\'")
        token = TOKEN_ANSWER.replace("'", "\\'")
        nginx_conf = os.path.join(work, "backend.conf")
        hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3") if args.pool else ("127.0.0.1",)
        listens = " ".join(f"listen {h}:{backend};" for h in hosts)
        with open(nginx_conf, "w") as f:
            f.write(f"""
worker_processes 1;
pid {work}/backend.pid;
error_log {work}/backend.error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/backend-body;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  server {{
    {listens}
    location = /token {{ default_type application/json; return 200 '{token}'; }}
    location / {{ default_type application/json; return 200 '{answer}'; }}
  }}
}}
""")
        # The configuration bench.py measures.
        bb_conf = botbridge_config(work, "proxy", bb_port, bb_admin,
                                   pool_of_three(backend) if args.pool else one_url(backend),
                                   LIMITS if args.limits else "", args.log)
        with_bot(bb_conf, args.bot, work, backend)
        check = subprocess.run([binary, "--config", bb_conf, "check"], capture_output=True, text=True) if not args.floor else None
        if check and check.returncode != 0:
            raise SystemExit(f"callgrind: {binary} refuses the configuration:\n{check.stdout}{check.stderr}")

        def start(cmd, port):
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "a"))
            procs.append(p)
            wait_port(port, p, log)
            return p

        start(["nginx", "-c", nginx_conf, "-g", "daemon off;"], backend)
        out_pattern = os.path.join(work, "callgrind.out")
        cmd = ([binary, f"127.0.0.1:{bb_port}", f"127.0.0.1:{backend}"] if args.floor
               else [binary, "--config", bb_conf])
        bb = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_pattern}", *cmd], bb_port)

        # One real request first: the answer must be the translated one (the floor's: the bot's own).
        req = urllib.request.Request(f"http://127.0.0.1:{bb_port}/chat", data=HAPTIK_BODY.encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": "Bearer bench-token", "client-id": "bench-client"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
        if args.floor:
            assert "messages" in body, body
        else:
            assert body[0]["bot_messages"] == ["Your order ships tomorrow.", "Anything else?\n[Yes] [No]"], body
        for _ in range(args.connections):
            socks.append(socket.create_connection(("127.0.0.1", bb_port)))
            socks[-1].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        drive(socks, args.warmup)
        callgrind_control("-z", str(bb.pid))
        drive(socks, args.requests)
        callgrind_control("-d", str(bb.pid))
        dump = out_pattern + ".1"  # the first dump on request; callgrind.out itself is the one at exit
        ir = total_ir(dump)
        if args.out:
            shutil.copyfile(dump, args.out)
        tokens = f", access tokens minted: {token_fetches(bb_admin)}" if args.bot == "dialogflow" else ""
        print(f"{label}: {ir / args.requests:.0f} instructions/request "
              f"({ir} Ir / {args.requests} requests, {args.connections} connections, after {args.warmup} warm-up{tokens})")
    finally:
        for s in socks:
            s.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p.args[0] == "valgrind" else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
