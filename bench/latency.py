#!/usr/bin/env python3
"""Sequential latency: one keep-alive client, N requests, through the proxy vs direct to the demo bot.

Run against the default proxy.toml (cargo run --release). The direct requests are CSML Chat API
requests signed here with the demo bot's key, so both paths end at the same bot doing the same work;
the difference is what the proxy adds (auth, translation both ways, re-signing, one more hop).
This is not the throughput benchmark; it measures one request's latency with nothing else running.
"""
import hashlib, hmac, http.client, json, statistics, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000

def run(host, port, path, headers_fn, body):
    conn = http.client.HTTPConnection(host, port)
    times = []
    for i in range(N + 100):
        t = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers_fn())
        resp = conn.getresponse()
        data = resp.read()
        took = time.perf_counter() - t
        assert resp.status == 200, (resp.status, data)
        if i >= 100:  # warm-up
            times.append(took * 1e6)
    times.sort()
    return times

def summary(name, t):
    q = lambda p: t[min(len(t) - 1, int(len(t) * p))]
    print(f"{name:8s} n={len(t)} mean={statistics.mean(t):7.0f}us p50={q(0.5):7.0f}us p90={q(0.9):7.0f}us p99={q(0.99):7.0f}us")
    return q(0.5), q(0.99)

haptik = json.dumps({"user": {"auth_id": "bench"}, "message_body": "Hello", "message_type": 0, "business_id": 343})
csml = json.dumps({"client": {"user_id": "bench"}, "metadata": {"business_id": 343}, "request_id": "bench",
                   "payload": {"content_type": "text", "content": {"text": "Hello"}}})

def signed():
    key = f"demo-backend-key|{int(time.time())}"
    sig = hmac.new(b"demo-backend-secret", key.encode(), hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-api-key": key, "x-api-signature": "sha256=" + sig}

direct = run("127.0.0.1", 8081, "/api/chat", signed, csml)
proxied = run("127.0.0.1", 8080, "/chat", lambda: {"content-type": "application/json",
              "authorization": "Bearer demo-token", "client-id": "demo-client"}, haptik)
d = summary("direct", direct)
p = summary("proxied", proxied)
print(f"added by the proxy: p50 {p[0] - d[0]:.0f}us, p99 {p[1] - d[1]:.0f}us")
