#!/usr/bin/env python3
"""Two or more botbridge binaries side by side under the same wrk load, alternating, in one run.

Usage: python3 bench/ab.py BINARY [BINARY ...]
Each runs the features-off configuration of bench/bench.py (a Haptik caller, a CSML bot on a
fixed-answer nginx); wrk -t1 -c50, a 2 s warm-up then 3 rounds of 8 s each, the binaries taking
turns. Prints each round and each binary's mean CPU per request (user + system from /proc). For
telling what a change costs on a shared machine, where two separate runs differ by more than that.
AB_LOG=info turns the access log on (its default; the line of every request to a file here).
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
 server {{ listen 127.0.0.1:{backend} reuseport; location / {{ default_type application/json; return 200 '{answer}'; }} }} }}""")
open(f"{work}/post.lua","w").write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer bench-token"\nwrk.headers["client-id"] = "bench-client"\n' % json.dumps(HAPTIK_BODY))
procs=[subprocess.Popen(["nginx","-c",f"{work}/backend.conf","-g","daemon off;"])]
ports=[]
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
url = "http://127.0.0.1:{backend}/api/chat"
""")
    procs.append(subprocess.Popen([b,"--config",f"{work}/bb{i}.toml"],stderr=open(f"{work}/bb{i}.log","w")))
    ports.append(port)
time.sleep(1.5)
res={b:[] for b in bins}
try:
    for rnd in range(4):
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
