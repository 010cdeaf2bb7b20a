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
AB_SHADOW=on sends the load to bench.py's shadowed route instead (the same, with a shadow at 100%
to a second fixed-answer nginx bot), and prints the mean p99 as well.
AB_ROUNDS=N measures N rounds (default 3).
"""
import os, shutil, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (NEVER_HIT, SHADOWED, TICKS, botbridge_config, cpu_ticks, fixed_answer_server, free_port,
                   nginx_conf, one_url, pool_of_three, post_script, run_wrk)
bins = sys.argv[1:]
if not bins:
    raise SystemExit(__doc__)
backend, shadow_bot = free_port(), free_port()
work = tempfile.mkdtemp(prefix="ab-"); os.chmod(work, 0o755)
backend_conf = nginx_conf(work, "backend", fixed_answer_server(backend, ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
                          + "\n  " + fixed_answer_server(shadow_bot))
script = post_script(work)
procs=[subprocess.Popen(["nginx","-c",backend_conf,"-g","daemon off;"])]
ports=[]
features = os.environ.get("AB_FEATURES") == "on"
endpoints = pool_of_three(backend) if features else one_url(backend)
shadow = os.environ.get("AB_SHADOW") == "on"
path = "/shadowed" if shadow else "/chat"
if shadow:
    endpoints += SHADOWED.format(shadow_bot=shadow_bot)
for i,b in enumerate(bins):
    port, admin = free_port(), free_port()
    conf = botbridge_config(work, f"bb{i}", port, admin, endpoints, NEVER_HIT if features else "",
                            os.environ.get("AB_LOG", "warn"))
    procs.append(subprocess.Popen([b,"--config",conf],stderr=open(f"{work}/bb{i}.log","w")))
    ports.append(port)
time.sleep(1.5)
res={b:[] for b in bins}
p99s={b:[] for b in bins}
try:
    for rnd in range(int(os.environ.get("AB_ROUNDS", "3")) + 1):
        for i,b in enumerate(bins):
            pid=procs[i+1].pid
            before=cpu_ticks([pid])
            r=run_wrk(f"http://127.0.0.1:{ports[i]}{path}", script, 8 if rnd else 2, 50)
            cpu=(cpu_ticks([pid])-before)/TICKS*1e6/max(r["requests"],1)
            print(f"round {rnd} {b}: {r['rps']:.0f} req/s cpu {cpu:.1f} us/req p99 {r['p99']:.2f} non2xx {r['non2xx']}", flush=True)
            if rnd:
                res[b].append(cpu)
                p99s[b].append(r["p99"])
finally:
    for p in procs:
        p.terminate()
    shutil.rmtree(work, ignore_errors=True)
for b in bins:
    print(f"{b}: mean CPU {sum(res[b]) / len(res[b]):.1f} µs per request, p99 {sum(p99s[b]) / len(p99s[b]):.2f} ms")
