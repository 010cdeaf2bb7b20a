#!/usr/bin/env python3
"""Live check of botbridge's dashboards and Prometheus rules against a real Prometheus.

Starts test bots (a good one, a slow one, one that answers nonsense, one that fails, and a dead
address; a pool of the good one and a dead address, and a pool whose every endpoint is dead, both
with health checks), a small auth service, a redis-server, the real botbridge binary and a real Prometheus that scrapes the
proxy's admin listener every second and evaluates dashboards/prometheus/botbridge-rules.yml. Drives
traffic with successes, auth failures, backend errors and timeouts, rate-limited callers and a backend
at its max_in_flight, kills Redis for the last seconds (so the limits fall back), then evaluates every PromQL
expression of the Grafana dashboard and every rule through Prometheus's HTTP API. It fails on any
expression that errors or returns no series, on any rule Prometheus reports unhealthy, and on any
alert that is not pending or firing under this traffic (each alert's condition is made true on
purpose, so a silently broken alert is caught too).

Usage: python3 dashboards/live_check.py [path/to/botbridge]   (default: target/debug/botbridge)
Needs prometheus, promtool and redis-server on PATH (Debian: apt-get install prometheus redis-server).
"""
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "dashboards", "botbridge.json")
RULES = os.path.join(ROOT, "dashboards", "prometheus", "botbridge-rules.yml")
TRAFFIC_SECONDS = 25
REDIS_DOWN_SECONDS = 10  # Redis is killed this long before the traffic ends

CSML_ANSWER = json.dumps({
    "request_id": "r", "interaction_id": "i",
    "messages": [
        {"conversation_id": "c", "direction": "SEND", "interaction_order": 0,
         "payload": {"content_type": "text", "content": {"text": "Hello!"}}},
        {"conversation_id": "c", "direction": "SEND", "interaction_order": 0,
         "payload": {"content_type": "object", "content": {"only": "for csml clients"}}},
    ],
    "client": {"bot_id": "b", "channel_id": "c", "user_id": "u"},
    "received_at": "2026-01-01T00:00:00.000Z", "is_authorized": True,
}).encode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(handler_fn):
    """Starts a threaded HTTP server whose POST handler is handler_fn(path, headers, body) -> (status, bytes)."""
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status, out = handler_fn(self.path, self.headers, body)
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy gave up first (the slow bot, on purpose)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def auth_service(path, headers, body):
    q = json.loads(body)
    valid = q.get("client_id") == "svc-client" and q.get("token") == "svc-token"
    return 200, json.dumps({"valid": valid}).encode()


def slow_bot(path, headers, body):
    time.sleep(2.5)
    return 200, CSML_ANSWER


def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


LEX_CLOSED = json.dumps({"messages": [{"contentType": "PlainText", "content": "bye"}],
                         "sessionState": {"dialogAction": {"type": "Close"}}}).encode()


def start_redis(work, port):
    """Starts redis-server on port (no persistence) and waits until it answers PING."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("live check: redis-server did not come up")


def wait_for(url, what, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"live check: {what} did not come up at {url}")


def wait_for_down(url, backend, seconds=30):
    """Waits until every endpoint of `backend` fails its health checks (GET /backends)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, body = http("GET", url, timeout=2)
        if status == 200:
            b = [b for b in json.loads(body)["backends"] if b["name"] == backend][0]
            if b["endpoints"] and not any(e["healthy"] for e in b["endpoints"]):
                return
        time.sleep(0.2)
    raise SystemExit(f"live check: the endpoints of {backend} were never marked down")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "botbridge")
    for tool in ("prometheus", "promtool", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"live check: {tool} is not installed (apt-get install prometheus redis-server)")
    if not os.path.exists(binary):
        raise SystemExit(f"live check: no botbridge binary at {binary} (cargo build first)")
    subprocess.run(["promtool", "check", "rules", RULES], check=True)

    work = tempfile.mkdtemp(prefix="botbridge-live-")
    procs = []
    try:
        servers = {
            "ok": serve(lambda p, h, b: (200, CSML_ANSWER)),
            "slow": serve(slow_bot),
            "bad": serve(lambda p, h, b: (200, b"<html>not a bot</html>")),
            "fail": serve(lambda p, h, b: (500, b"")),
            "auth": serve(auth_service),
            "callback": serve(lambda p, h, b: (200, b"{}")),
            # A stateful bot (a session in its path) that ends every conversation.
            "lex": serve(lambda p, h, b: (200, LEX_CLOSED)),
        }
        ports = {k: v[1] for k, v in servers.items()}
        dead, listen, admin, prom, rport = free_port(), free_port(), free_port(), free_port(), free_port()
        redis = start_redis(work, rport)
        procs.append(redis)
        dead2, dead3, dead4 = free_port(), free_port(), free_port()
        dead_callback = free_port()
        dead_token = free_port()

        def backend(name, port, read_ms=5000):
            return f"""
[[backends]]
name = "{name}"
dialect = "csml"
url = "http://127.0.0.1:{port}/api/chat"
auth = "plain"
api_key = "k"
connect_timeout_ms = 500
read_timeout_ms = {read_ms}
"""
        config = f"""
[server]
listen = "127.0.0.1:{listen}"
threads = 2
pid_file = "{work}/pid"
upgrade_sock = "{work}/sock"
grace_period_seconds = 0
[admin]
listen = "127.0.0.1:{admin}"
[log]
filter = "warn"
[auth_service]
url = "http://127.0.0.1:{ports['auth']}/verify"
positive_ttl_s = 60
negative_ttl_s = 1
[[clients.haptik]]
name = "acme"
client_id = "acme-client"
token = "acme-token"
[[clients.csml]]
name = "plain"
key = "plain-key"
auth = "plain"
callback_hosts = ["127.0.0.1"]
allow_http_callbacks = true
allow_private_callbacks = true
callback_secret = "callback-secret"
[[clients.directline]]
name = "webchat"
secret = "live-check-directline-secret"
[[clients.csml]]
name = "limited"
key = "limited-key"
auth = "plain"
rate_limit = {{ requests = 5, per_seconds = 1 }}
user_rate_limit = {{ requests = 2, per_seconds = 1 }}
[redis]
url = "redis://127.0.0.1:{rport}/0"
timeout_ms = 200
backoff_ms = 500
[delivery]
spool_dir = "{work}/spool"
dead_letter_path = "{work}/dead-letters.jsonl"
deadline_ms = 1000
timeout_ms = 300
retry_initial_ms = 100
{backend("good-bot", ports["ok"])}
{backend("slow-bot", ports["slow"], read_ms=1000)}
{backend("nonsense-bot", ports["bad"])}
{backend("failing-bot", ports["fail"])}
{backend("dead-bot", dead)}
{backend("busy-bot", ports["slow"], read_ms=1000)}
max_in_flight = 1
[[backends]]
name = "lex-bot"
dialect = "lex-v2"
url = "http://127.0.0.1:{ports['lex']}"
region = "us-east-1"
bot_id = "B"
bot_alias_id = "A"
locale_id = "en_US"
access_key_id = "AKID"
secret_access_key = "s"
[[backends]]
name = "tokened-bot"
dialect = "dialogflow-cx"
url = "http://127.0.0.1:{ports['ok']}"
project = "p"
location = "global"
agent = "a"
language_code = "en"
credentials_file = "{ROOT}/docs/demo/DEMO-ONLY-dialogflow-service-account.json"
token_uri = "http://127.0.0.1:{dead_token}/token"
[[backends]]
name = "pool-bot"
dialect = "csml"
urls = ["http://127.0.0.1:{ports['ok']}/api/chat", "http://127.0.0.1:{dead2}/api/chat"]
auth = "plain"
api_key = "k"
connect_timeout_ms = 500
[backends.health]
interval_s = 1
unhealthy_after = 1
[[backends]]
name = "down-pool"
dialect = "csml"
urls = ["http://127.0.0.1:{dead3}/api/chat", "http://127.0.0.1:{dead4}/api/chat"]
auth = "plain"
api_key = "k"
connect_timeout_ms = 500
[backends.health]
interval_s = 1
unhealthy_after = 1
[[routes]]
name = "pool"
path = "/pool"
ingress = "auto"
backend = "pool-bot"
[[routes]]
name = "pool-down"
path = "/pool-down"
ingress = "auto"
backend = "down-pool"
[[routes]]
name = "maintenance"
path = "/maintenance"
ingress = "auto"
backend = "down-pool"
fallback = "good-bot"
[[routes]]
name = "chat"
path = "/chat"
ingress = "auto"
backend = "good-bot"
[[routes.businesses]]
id = 2
backend = "slow-bot"
[[routes.businesses]]
id = 3
backend = "dead-bot"
[[routes.businesses]]
id = 4
backend = "nonsense-bot"
[[routes.businesses]]
id = 5
backend = "failing-bot"
[[routes.businesses]]
id = 6
backend = "lex-bot"
[[routes.businesses]]
id = 7
backend = "tokened-bot"
[[routes]]
name = "busy"
path = "/busy"
ingress = "csml"
backend = "busy-bot"
[[routes]]
name = "directline"
path_prefix = "/v3/directline/"
ingress = "directline"
backend = "good-bot"
"""
        with open(os.path.join(work, "proxy.toml"), "w") as f:
            f.write(config)
        log = open(os.path.join(work, "proxy.log"), "w")
        procs.append(subprocess.Popen([binary, "--config", os.path.join(work, "proxy.toml")], stdout=log, stderr=log))
        wait_for(f"http://127.0.0.1:{admin}/healthz", "botbridge")
        wait_for_down(f"http://127.0.0.1:{admin}/backends", "down-pool")

        shutil.copy(RULES, os.path.join(work, "botbridge-rules.yml"))
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [botbridge-rules.yml]
scrape_configs:
  - job_name: botbridge
    static_configs: [{{targets: ["127.0.0.1:{admin}"]}}]
""")
        plog = open(os.path.join(work, "prometheus.log"), "w")
        procs.append(subprocess.Popen([
            "prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
            f"--web.listen-address=127.0.0.1:{prom}",
        ], stdout=plog, stderr=plog))
        wait_for(f"http://127.0.0.1:{prom}/-/ready", "prometheus")

        chat = f"http://127.0.0.1:{listen}/chat"
        def haptik(client, token, business=1, body=None, user="u"):
            body = body or json.dumps({"user": {"auth_id": user}, "message_body": "hi", "message_type": 0, "business_id": business}).encode()
            return http("POST", chat, body, {"content-type": "application/json", "authorization": f"Bearer {token}", "client-id": client})

        counts = {}
        lock = threading.Lock()
        def note(kind, status):
            with lock:
                counts.setdefault(kind, {}).setdefault(status, 0)
                counts[kind][status] += 1

        stop = time.time() + TRAFFIC_SECONDS
        def timeouts():
            while time.time() < stop:
                note("timeout", haptik("acme-client", "acme-token", business=2)[0])
        # CSML callers (Haptik's share of refusals must stay high enough for BotbridgeAuthFailureSpike).
        def csml_call(key, user="u", path="/chat"):
            body = json.dumps({"client": {"user_id": user}, "payload": {"content_type": "text", "content": {"text": "hi"}}}).encode()
            return http("POST", f"http://127.0.0.1:{listen}{path}", body, {"content-type": "application/json", "x-api-key": key})
        def busy():
            while time.time() < stop:
                status = csml_call("plain-key", path="/busy")[0]
                note("busy", status)
                if status == 503:
                    time.sleep(0.05)
        def redis_dies():
            time.sleep(max(0, stop - REDIS_DOWN_SECONDS - time.time()))
            redis.kill()
        threads = [threading.Thread(target=timeouts) for _ in range(3)]
        threads += [threading.Thread(target=busy) for _ in range(2)] + [threading.Thread(target=redis_dies)]
        for t in threads:
            t.start()
        csml = json.dumps({"client": {"user_id": "u"}, "payload": {"content_type": "text", "content": {"text": "hi"}}}).encode()
        while time.time() < stop:
            note("ok", haptik("acme-client", "acme-token")[0])
            note("auth-service ok", haptik("svc-client", "svc-token")[0])
            note("csml ok", http("POST", chat, csml, {"content-type": "application/json", "x-api-key": "plain-key"})[0])
            note("bad token", haptik("acme-client", "wrong")[0])
            note("unknown client", haptik("stranger", "guess")[0])
            note("no credentials", http("POST", chat, b"{}", {"content-type": "application/json"})[0])
            note("dead backend", haptik("acme-client", "acme-token", business=3)[0])
            note("nonsense backend", haptik("acme-client", "acme-token", business=4)[0])
            note("failing backend", haptik("acme-client", "acme-token", business=5)[0])
            # Two more Haptik requests: one more refusal keeps Haptik's refused share over 20%.
            note("bad token", haptik("acme-client", "also-wrong")[0])
            note("stateful", haptik("acme-client", "acme-token", business=6)[0])
            note("token endpoint down", haptik("acme-client", "acme-token", business=7)[0])
            note("bad json", haptik("acme-client", "acme-token", body=b"{nope")[0])
            for user in ("looping", "looping", "looping", f"u{time.time()}"):
                note("limited", csml_call("limited-key", user=user)[0])
            for kind, path in (("pool with a dead endpoint", "/pool"), ("pool all down", "/pool-down"), ("fallback", "/maintenance")):
                note(kind, http("POST", f"http://127.0.0.1:{listen}{path}", csml, {"content-type": "application/json", "x-api-key": "plain-key"})[0])
            # A Direct Line client: a conversation, a message, a poll (503 once Redis is gone: a
            # channel conversation lives on Redis when there is one).
            dl = f"http://127.0.0.1:{listen}/v3/directline"
            auth = {"authorization": "Bearer live-check-directline-secret", "content-type": "application/json"}
            status, body = http("POST", f"{dl}/conversations", b"", auth)
            note("directline", status)
            if status == 201:
                conv = json.loads(body)["conversationId"]
                msg = json.dumps({"type": "message", "from": {"id": "u"}, "text": "hi"}).encode()
                note("directline", http("POST", f"{dl}/conversations/{conv}/activities", msg, auth)[0])
                note("directline", http("GET", f"{dl}/conversations/{conv}/activities?watermark=", None, auth)[0])
            # Async mode: one callback delivered, one to a dead receiver (dead letters after the deadline).
            for name, port in (("async ok", ports["callback"]), ("async dead", dead_callback)):
                body = json.dumps({"client": {"user_id": "u"}, "callback_url": f"http://127.0.0.1:{port}/cb",
                                   "payload": {"content_type": "text", "content": {"text": "hi"}}}).encode()
                note(name, http("POST", chat, body, {"content-type": "application/json", "x-api-key": "plain-key"})[0])
            time.sleep(0.05)
        for t in threads:
            t.join()
        print("traffic:", json.dumps(counts, sort_keys=True))
        expected = {"ok": 200, "auth-service ok": 200, "csml ok": 200, "bad token": 401, "unknown client": 401,
                    "no credentials": 400, "dead backend": 502, "nonsense backend": 502, "failing backend": 502,
                    "stateful": 200, "token endpoint down": 502,
                    "bad json": 400, "timeout": 504, "limited": {200, 429}, "busy": {503, 504},
                    "pool with a dead endpoint": 200, "pool all down": 503,
                    "fallback": 200, "async ok": 200, "async dead": 200, "directline": {200, 201, 503}}
        for kind, status in expected.items():
            want = status if isinstance(status, set) else {status}
            if set(counts.get(kind, {})) != want:
                raise SystemExit(f"live check: {kind} answered {counts.get(kind)}, expected only {sorted(want)}")
        time.sleep(4)  # a few more scrapes and rule evaluations

        def query(expr):
            url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            status, body = http("GET", url)
            data = json.loads(body)
            if status != 200 or data.get("status") != "success":
                return None, data.get("error", body[:200])
            return data["data"]["result"], None

        failures = []
        checked = 0
        dash = json.load(open(DASHBOARD))
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1m").replace("$__interval", "15s").replace('"$route"', '".*"')
                result, err = query(expr)
                checked += 1
                if err is not None:
                    failures.append(f"dashboard '{panel['title']}' [{target['refId']}]: error: {err}")
                elif not result:
                    failures.append(f"dashboard '{panel['title']}' [{target['refId']}]: no series: {expr}")
        for var in dash["templating"]["list"]:
            status, body = http("GET", f"http://127.0.0.1:{prom}/api/v1/label/route/values")
            if not json.loads(body)["data"]:
                failures.append(f"variable {var['name']}: no values")

        status, body = http("GET", f"http://127.0.0.1:{prom}/api/v1/rules")
        groups = json.loads(body)["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if len(rules) != 18:
            failures.append(f"prometheus loaded {len(rules)} rules, expected 18")
        for rule in rules:
            name = rule.get("name")
            checked += 1
            if rule.get("health") != "ok":
                failures.append(f"rule {name}: health {rule.get('health')}: {rule.get('lastError')}")
            result, err = query(rule["query"])
            if err is not None:
                failures.append(f"rule {name}: error: {err}")
            elif not result:
                failures.append(f"rule {name}: no series")
            if rule["type"] == "alerting" and rule.get("state") not in ("pending", "firing"):
                failures.append(f"alert {name}: {rule.get('state')} although the traffic makes its condition true")

        print(f"live check: {checked} expressions evaluated against Prometheus")
        for f in failures:
            print("  FAIL", f)
        if failures:
            print(open(os.path.join(work, "proxy.log")).read()[-3000:])
            raise SystemExit(1)
        print("live check: every dashboard query and rule returns series; every alert is pending or firing")
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
