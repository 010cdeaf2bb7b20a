#!/usr/bin/env python3
"""What botbridge costs as its configuration and its connections grow: `python3 bench/scale.py`.

Configs with 10, 1,000 and 10,000 routes (each with a backend of its own, the bot dialects in turn:
CSML, Haptik, the CSML engine, Rasa, Lex V2, Dialogflow CX, Direct Line; the caller dialects in
turn) and 100, 10,000 and 100,000 caller credentials (Haptik, CSML signed, Rasa, Lex V2, Dialogflow
CX, Direct Line in turn). For each pair it reports:
  - `check`: the wall time of `botbridge check` on the config;
  - start: from the process's start until its listener answers;
  - reload: `POST /reload` on the admin listener, until it answers;
  - idle RSS after start (and after the reload), from /proc;
  - CPU per request (user + system of the proxy over a wrk run against the first route, a Haptik
    caller through translation to a signed CSML bot, a fixed-answer nginx);
and from those, RSS per route (10,000 against 10 routes at 100 credentials) and per credential
(100,000 against 100 credentials at 10 routes).

Then, on the small config: RSS after a flood of 100,000 distinct user ids with a per-user limit on
(one bucket per user), and 1,000 / 5,000 / 10,000 concurrent keep-alive connections: RSS and p99
while all of them ask at once (busy, wrk) and RSS with all of them open and quiet after one request
each (idle).

Everything runs on the same 2 shared cores: compare ratios and CPU per request, not requests/s.
`--quick` runs 10 and 1,000 routes, 100 and 10,000 credentials, and 1,000 connections.
"""
import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (cpu_ticks, fixed_answer_server, free_port, nginx_conf, post_script,  # noqa: E402
                   rss_kib, run_wrk, wait_port)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICE_ACCOUNT = os.path.join(ROOT, "docs/demo/DEMO-ONLY-dialogflow-service-account.json")
BOT_DIALECTS = ["csml", "haptik", "csml-engine", "rasa", "lex-v2", "dialogflow-cx", "directline"]
CALLER_DIALECTS = ["haptik", "csml", "rasa", "auto", ["haptik", "rasa"]]


def backend_table(i, bot):
    """Backend i of dialect `bot`, at the fixed-answer nginx (only backend 0 is ever asked)."""
    dialect = BOT_DIALECTS[i % len(BOT_DIALECTS)] if i else "csml"
    head = f'[[backends]]\nname = "b{i}"\ndialect = "{dialect}"\n'
    base = f"http://127.0.0.1:{bot}"
    keys = {
        "csml": f'url = "{base}/api/chat"\nauth = "signed"\napi_key = "k{i}"\napi_secret = "s{i}"',
        "haptik": f'url = "{base}/webhook"\ntoken = "t{i}"\nclient_id = "c{i}"',
        "csml-engine": f'url = "{base}/run"\nbot_id = "bot{i}"\nchannel_id = "ch{i}"\napi_key = "k{i}"',
        "rasa": f'url = "{base}/webhooks/rest/webhook"',
        "lex-v2": (f'url = "{base}"\nregion = "us-east-1"\nbot_id = "BOT{i:07d}"\nbot_alias_id = "TSTALIASID"\n'
                   f'locale_id = "en_US"\naccess_key_id = "AK{i}"\nsecret_access_key = "sk{i}"'),
        "dialogflow-cx": (f'url = "{base}"\nproject = "p{i}"\nlocation = "global"\nagent = "a{i}"\n'
                          f'language_code = "en"\ncredentials_file = "{SERVICE_ACCOUNT}"\n'
                          f'token_uri = "{base}/token"'),
        "directline": f'url = "{base}/v3/directline"\nsecret = "directline-bot-secret-{i:08d}"',
    }[dialect]
    return head + keys + "\n"


def route_table(i, backends):
    """Route i, to backend i of the `backends` (in turn when there are fewer backends than routes)."""
    ingress = CALLER_DIALECTS[i % len(CALLER_DIALECTS)] if i else "haptik"
    path = "/chat" if i == 0 else f"/t{i}/chat"
    return (f'[[routes]]\nname = "r{i}"\npath = "{path}"\ningress = {json.dumps(ingress)}\n'
            f'backend = "b{i % backends}"\nbusiness_id = 343\n')


def credential_table(i):
    """Credential i; credential 0 is the bench caller of bench.py's wrk script."""
    if i == 0:
        return '[[clients.haptik]]\nname = "bench"\nclient_id = "bench-client"\ntoken = "bench-token"\n'
    kind = ["haptik", "csml", "rasa", "lex-v2", "dialogflow-cx", "directline"][i % 6]
    keys = {
        "haptik": f'client_id = "client-{i}"\ntoken = "token-{i}"',
        "csml": f'key = "key-{i}"\nauth = "signed"\nsecret = "secret-{i}"',
        "rasa": f'token = "rasa-token-{i}"',
        "lex-v2": f'access_key_id = "AKID{i:012d}"\nsecret_access_key = "lex-secret-{i}"',
        "dialogflow-cx": f'token = "df-token-{i}"',
        "directline": f'secret = "directline-secret-{i:08d}"',
    }[kind]
    return f'[[clients.{kind}]]\nname = "c{i}"\n{keys}\n'


def write_config(work, name, routes, credentials, port, admin, bot, extra="", backends=None):
    own = os.path.join(work, name)
    os.makedirs(own, mode=0o700, exist_ok=True)
    parts = [f"""[server]
listen = "127.0.0.1:{port}"
threads = 1
upstream_pool_size = 64
pid_file = "{own}/pid"
upgrade_sock = "{own}/upgrade.sock"
grace_period_seconds = 0
max_connections_per_address = 0
max_client_connections = 20000
[admin]
listen = "127.0.0.1:{admin}"
[log]
filter = "warn"
{extra}
"""]
    parts += [credential_table(i) for i in range(credentials)]
    backends = backends or routes
    parts += [backend_table(i, bot) for i in range(backends)]
    parts += [route_table(i, backends) for i in range(routes)]
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def timed(cmd):
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"scale: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.monotonic() - start


def start_proxy(binary, config, port, log):
    start = time.monotonic()
    proc = subprocess.Popen([binary, "-c", config], stdout=log, stderr=log, cwd=ROOT)
    deadline = start + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"scale: botbridge exited ({proc.returncode}); see {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, time.monotonic() - start
        except OSError:
            time.sleep(0.005)
    raise SystemExit("scale: botbridge did not listen within 120 s")


def settle_rss(pid, seconds=1.0):
    time.sleep(seconds)
    return rss_kib(pid)


def reload_seconds(admin):
    start = time.monotonic()
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
    return time.monotonic() - start


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_per_request(proc, port, script, seconds):
    run_wrk(f"http://127.0.0.1:{port}/chat", script, 1, 10)  # warm-up
    before = cpu_ticks([proc.pid])
    out = run_wrk(f"http://127.0.0.1:{port}/chat", script, seconds, 50)
    ticks = cpu_ticks([proc.pid]) - before
    if out["non2xx"]:
        raise SystemExit(f"scale: {out['non2xx']} non-2xx answers on /chat")
    return ticks / os.sysconf("SC_CLK_TCK") / out["requests"] * 1e6, out


def config_row(args, work, bot, script, routes, credentials, backends=None):
    """One configuration's row: `backends` (default: one per route) shared by the routes in turn."""
    port, admin = free_port(), free_port()
    name = f"r{routes}-c{credentials}-b{backends or routes}"
    config = write_config(work, name, routes, credentials, port, admin, bot, backends=backends)
    check = timed([args.binary, "-c", config, "check"])
    with open(os.path.join(work, f"{name}.log"), "w") as log:
        proc, start = start_proxy(args.binary, config, port, log)
        try:
            idle = settle_rss(proc.pid)
            reload = reload_seconds(admin)
            after_reload = settle_rss(proc.pid)
            cpu, _ = cpu_per_request(proc, port, script, args.seconds)
        finally:
            stop(proc)
    row = {"routes": routes, "credentials": credentials, "backends": backends or routes,
           "check_s": check, "start_s": start,
           "reload_s": reload, "idle_rss_kib": idle, "rss_after_reload_kib": after_reload,
           "cpu_us": cpu, "config_bytes": os.path.getsize(config)}
    print(f"  {routes:>6} routes ({backends or routes} backends) {credentials:>7} credentials: check {check:.3f} s, start {start:.3f} s, "
          f"reload {reload:.3f} s, idle RSS {idle / 1024:.1f} MB (after reload {after_reload / 1024:.1f}), "
          f"{cpu:.2f} us CPU/request", flush=True)
    return row


FLOOD_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
wrk.headers["client-id"] = "bench-client"
counter = 0
request = function()
  counter = counter + 1
  local body = '{"user": {"auth_id": "flood-' .. THREAD_ID .. '-' .. counter .. '"}, "message_body": "hi", "message_type": 0, "business_id": 343}'
  return wrk.format(nil, nil, nil, body)
end
"""


def user_flood(args, work, bot, users):
    """RSS before and after `users` distinct user ids, each with a bucket of the per-user limit."""
    port, admin = free_port(), free_port()
    limits = "[limits]\nuser_rate_limit = { requests = 1000000, per_seconds = 1 }\n"
    config = write_config(work, "flood", 10, 100, port, admin, bot, extra=limits)
    script = os.path.join(work, "flood.lua")
    with open(script, "w") as f:
        f.write(FLOOD_SCRIPT.replace("THREAD_ID", "'a'"))
    with open(os.path.join(work, "flood.log"), "w") as log:
        proc, _ = start_proxy(args.binary, config, port, log)
        try:
            before = settle_rss(proc.pid)
            sent, started = 0, time.monotonic()
            # One wrk connection sends the ids in order (the script numbers them) until the
            # proxy's request counter says `users` were sent.
            proc_wrk = subprocess.Popen(["wrk", "-t1", "-c1", "-d600s", "-s", script,
                                         f"http://127.0.0.1:{port}/chat"],
                                        stdout=subprocess.DEVNULL)
            metrics = f"http://127.0.0.1:{admin}/metrics"
            while True:
                time.sleep(0.5)
                sent = requests_seen(metrics)
                if sent >= users or time.monotonic() - started > 600:
                    break
            proc_wrk.terminate()
            proc_wrk.wait()
            after = settle_rss(proc.pid)
        finally:
            stop(proc)
    print(f"  {sent} distinct users with a per-user limit: RSS {before / 1024:.1f} -> {after / 1024:.1f} MB "
          f"({(after - before) * 1024 / max(sent, 1):.0f} B per user)", flush=True)
    return {"users": sent, "rss_before_kib": before, "rss_after_kib": after}


def requests_seen(metrics_url):
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("botbridge_requests_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def open_idle(port, n, body):
    """n keep-alive connections, each having asked once and been answered; the sockets."""
    request = (f"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer bench-token\r\nclient-id: bench-client\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
    return socks


def connections(args, work, bot, script, counts):
    from bench import HAPTIK_BODY
    port, admin = free_port(), free_port()
    config = write_config(work, "conns", 10, 100, port, admin, bot)
    rows = []
    with open(os.path.join(work, "conns.log"), "w") as log:
        proc, _ = start_proxy(args.binary, config, port, log)
        try:
            base = settle_rss(proc.pid)
            for n in counts:
                out = run_wrk(f"http://127.0.0.1:{port}/chat", script, args.seconds, n,
                              threads=2 if n > 1000 else 1)
                busy = rss_kib(proc.pid)
                time.sleep(1)
                socks = open_idle(port, n, HAPTIK_BODY)
                idle = settle_rss(proc.pid, 2)
                for s in socks:
                    s.close()
                rows.append({"connections": n, "rps": out["rps"], "p50_ms": out["p50"], "p99_ms": out["p99"],
                             "non2xx": out["non2xx"], "socket_errors": out["socket_errors"],
                             "rss_busy_kib": busy, "rss_idle_kib": idle, "rss_base_kib": base})
                print(f"  {n:>6} connections: busy p99 {out['p99']:.1f} ms ({out['rps']:.0f} req/s, "
                      f"non-2xx {out['non2xx']}{', socket errors ' + out['socket_errors'] if out['socket_errors'] else ''}), "
                      f"RSS busy {busy / 1024:.1f} MB, idle {idle / 1024:.1f} MB (base {base / 1024:.1f})",
                      flush=True)
                time.sleep(2)
        finally:
            stop(proc)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/botbridge"))
    ap.add_argument("--seconds", type=int, default=5, help="wrk seconds per CPU or connection measurement")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--configs", help="only these ROUTES:CREDENTIALS[:BACKENDS] configs, e.g. "
                    "10:100,10000:100,10000:100:10 (backends: one per route unless given)")
    ap.add_argument("--skip", default="", help="comma-separated: configs,flood,connections")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    route_counts = [10, 1000] if args.quick else [10, 1000, 10000]
    credential_counts = [100, 10000] if args.quick else [100, 10000, 100000]
    conn_counts = [1000] if args.quick else [1000, 5000, 10000]
    if args.quick:
        args.users = min(args.users, 10000)

    work = tempfile.mkdtemp(prefix="botbridge-scale-")
    bot = free_port()
    nginx = subprocess.Popen(["nginx", "-c", nginx_conf(work, "bot", fixed_answer_server(bot), workers=1, connections=24000),
                              "-p", work, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    results = {"configs": [], "flood": None, "connections": []}
    try:
        wait_port(bot)
        script = post_script(work)
        if "configs" not in skip:
            print("configs (routes x credentials):", flush=True)
            configs = [(r, c) for r in route_counts for c in credential_counts]
            # The most routes again, sharing 10 backends: what a route costs without a backend.
            configs.append((route_counts[-1], credential_counts[0], 10))
            if args.configs:
                configs = [tuple(int(n) for n in p.split(":")) for p in args.configs.split(",")]
            for config in configs:
                results["configs"].append(config_row(args, work, bot, script, *config))
            if not args.configs:
                summarize(results["configs"], route_counts, credential_counts)
        if "flood" not in skip:
            print("per-user limit flood:", flush=True)
            results["flood"] = user_flood(args, work, bot, args.users)
        if "connections" not in skip:
            print("concurrent connections (10 routes, 100 credentials):", flush=True)
            results["connections"] = connections(args, work, bot, script, conn_counts)
    finally:
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def summarize(rows, route_counts, credential_counts):
    at = {(r["routes"], r["credentials"]): r for r in rows if r["backends"] == r["routes"]}
    shared = next(r for r in rows if r["backends"] != r["routes"])
    lo_r, hi_r = route_counts[0], route_counts[-1]
    lo_c, hi_c = credential_counts[0], credential_counts[-1]
    per_route = (at[hi_r, lo_c]["idle_rss_kib"] - at[lo_r, lo_c]["idle_rss_kib"]) * 1024 / (hi_r - lo_r)
    per_cred = (at[lo_r, hi_c]["idle_rss_kib"] - at[lo_r, lo_c]["idle_rss_kib"]) * 1024 / (hi_c - lo_c)
    cpu = at[hi_r, hi_c]["cpu_us"] / at[lo_r, lo_c]["cpu_us"]
    alone = (shared["idle_rss_kib"] - at[lo_r, lo_c]["idle_rss_kib"]) * 1024 / (hi_r - lo_r)
    print(f"  RSS per route: {per_route:.0f} B ({lo_r} -> {hi_r} routes, each with its own backend), "
          f"{alone:.0f} B sharing {shared['backends']} backends (so {per_route - alone:.0f} B a backend); "
          f"per credential: {per_cred:.0f} B ({lo_c} -> {hi_c}); CPU per request at {hi_r}/{hi_c} vs "
          f"{lo_r}/{lo_c}: {cpu:.3f}x", flush=True)


if __name__ == "__main__":
    main()
