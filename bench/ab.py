#!/usr/bin/env python3
"""Two or more botbridge binaries side by side under the same wrk load, alternating, in one run.

Usage: python3 bench/ab.py BINARY [BINARY ...]
Each runs the features-off configuration of bench/bench.py (a Haptik caller, a CSML bot on a
fixed-answer nginx); wrk -t1 -c50, a 2 s warm-up then 3 rounds of 8 s each, the binaries taking
turns. Prints each round and each binary's mean CPU per request (user + system from /proc). For
telling what a change costs on a shared machine, where two separate runs differ by more than that.
AB_LOG=info turns the access log on (its default; the line of every request to a file here).
AB_FEATURES=on runs bench.py's features-on configuration instead (a 3-endpoint pool with health
checks, a credential and a per-user limit never hit; set AB_LOG=info too for its access log).
AB_ROUNDS=N measures N rounds (default 3).
"""
import json, os, shutil, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CSML_ANSWER, HAPTIK_BODY, cpu_ticks, TICKS, run_wrk, free_port
bins = sys.argv[1:]
if not bins:
    raise SystemExit(__doc__)
backend = free_port()
work = tempfile.mkdtemp(prefix="ab-"); os.chmod(work, 0o755)
answer = CSML_ANSWER.replace("'", "\\'")
open(f"{work}/backend.conf","w").write(f"""worker_processes 1; pid {work}/ngx.pid; error_log {work}/err.log warn; events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}/b; keepalive_requests 1000000;
 server {{ listen 127.0.0.1:{backend} reuseport; listen 127.0.0.2:{backend} reuseport; listen 127.0.0.3:{backend} reuseport; location / {{ default_type application/json; return 200 '{answer}'; }} }} }}""")
open(f"{work}/post.lua","w").write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer bench-token"\nwrk.headers["client-id"] = "bench-client"\n' % json.dumps(HAPTIK_BODY))
procs=[subprocess.Popen(["nginx","-c",f"{work}/backend.conf","-g","daemon off;"])]
ports=[]
features = os.environ.get("AB_FEATURES") == "on"
urls = ", ".join(f'"http://127.0.0.{i}:{backend}/api/chat"' for i in (1, 2, 3))
endpoints = (f'urls = [{urls}]\n[backends.health]\npath = "/health"\ninterval_s = 1' if features
             else f'url = "http://127.0.0.1:{backend}/api/chat"')
limits = ("[limits]\nrate_limit = { requests = 1000000, per_seconds = 1 }\n"
          "user_rate_limit = { requests = 1000000, per_seconds = 1 }" if features else "")
for i,b in enumerate(bins):
    port, admin = free_port(), free_port()
    open(f"{work}/bb{i}.toml","w").write(f"""[server]
listen = "127.0.0.1:{port}"
threads = 1
upstream_pool_size = 64
pid_file = "{work}/bb{i}.pid"
upgrade_sock = "{work}/bb{i}.sock"
grace_period_seconds = 0
[admin]
listen = "127.0.0.1:{admin}"
{limits}
[log]
filter = "{os.environ.get('AB_LOG', 'warn')}"
[[clients.haptik]]
name = "bench"
client_id = "bench-client"
token = "bench-token"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "bot"
[[backends]]
name = "bot"
dialect = "csml"
auth = "signed"
api_key = "bench-key"
api_secret = "bench-secret"
{endpoints}
""")
    procs.append(subprocess.Popen([b,"--config",f"{work}/bb{i}.toml"],stderr=open(f"{work}/bb{i}.log","w")))
    ports.append(port)
time.sleep(1.5)
res={b:[] for b in bins}
try:
    for rnd in range(int(os.environ.get("AB_ROUNDS", "3")) + 1):
        for i,b in enumerate(bins):
            pid=procs[i+1].pid
            before=cpu_ticks([pid])
            r=run_wrk(f"http://127.0.0.1:{ports[i]}/chat", f"{work}/post.lua", 8 if rnd else 2, 50)
            cpu=(cpu_ticks([pid])-before)/TICKS*1e6/max(r["requests"],1)
            print(f"round {rnd} {b}: {r['rps']:.0f} req/s cpu {cpu:.1f} us/req p99 {r['p99']:.2f} non2xx {r['non2xx']}", flush=True)
            if rnd: res[b].append(cpu)
finally:
    for p in procs:
        p.terminate()
    shutil.rmtree(work, ignore_errors=True)
for b in bins:
    print(f"{b}: mean CPU {sum(res[b]) / len(res[b]):.1f} µs per request")
