#!/usr/bin/env python3
"""Sequential latency: one keep-alive client, N requests, through the proxy vs direct to the demo bot.

Run against the default proxy.toml (cargo run --release): `python3 bench/latency.py [N] [PROXY_PORT]`. The direct
requests are CSML Chat API requests signed here with the demo bot's key, so both paths end at the
same bot doing the same work; the difference is what the proxy adds (auth, translation both ways,
re-signing, one more hop). When haproxy is installed the script also starts it as a plain
passthrough in front of the same bot and sends the same signed requests through it: what one more
loopback hop costs on this machine with no work at all, the peer to compare botbridge's figure with.

The default proxy.toml serves its demo bots from the proxy's own process, so the proxy's worker and
the bot's thread share one process's CPU placement; PROXY_PORT (default 8080) can name a second
botbridge instance without `[demo]` in front of the first one's bot: a proxy and a bot in separate
processes, as in production.

The paths take turns in blocks of 50 requests on their own keep-alive connections, so a slow phase
of the machine (another VM's load, the CPUs' idle states) falls on all of them alike. This is not the
throughput benchmark; it measures one request's latency with nothing else running.
"""
import hashlib, hmac, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

from bench import haproxy_config  # bench/bench.py, beside this file

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
PROXY_PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
BLOCK = 50
WARMUP = 100

haptik = json.dumps({"user": {"auth_id": "bench"}, "message_body": "Hello", "message_type": 0, "business_id": 343})
csml = json.dumps({"client": {"user_id": "bench"}, "metadata": {"business_id": 343}, "request_id": "bench",
                   "payload": {"content_type": "text", "content": {"text": "Hello"}}})


def signed():
    key = f"demo-backend-key|{int(time.time())}"
    sig = hmac.new(b"demo-backend-secret", key.encode(), hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-api-key": key, "x-api-signature": "sha256=" + sig}


def bearer():
    return {"content-type": "application/json", "authorization": "Bearer demo-token", "client-id": "demo-client"}


class Path:
    """One keep-alive connection. Each request goes out in one `send` (head and body together, as
    curl or a hyper client send a small request): Python's http.client sends the body in a second
    `send`, and the gap between the two, tens of µs of Python, is then part of every figure."""

    def __init__(self, name, port, path, headers_fn, body):
        self.name, self.path, self.headers_fn, self.body = name, path, headers_fn, body.encode()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.times = []

    def request_bytes(self):
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers_fn().items())
        return (f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                f"Content-Length: {len(self.body)}\r\n\r\n").encode() + self.body

    def exchange(self, request):
        """Sends one request, reads its answer to its Content-Length; the status line's code."""
        self.sock.sendall(request)
        buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit(f"latency: {self.name} closed the connection")
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = buf[:end].decode("latin-1").lower()
            length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
            if len(buf) >= end + 4 + length:
                return int(head.split(" ", 2)[1]), buf[end + 4:]

    def send(self, count, keep=True):
        for _ in range(count):
            request = self.request_bytes()  # signing is the client's work, outside the timed part
            t = time.perf_counter()
            status, data = self.exchange(request)
            took = time.perf_counter() - t
            assert status == 200, (self.name, status, data)
            if keep:
                self.times.append(took * 1e6)

    def summary(self):
        t = sorted(self.times)
        q = lambda p: t[min(len(t) - 1, int(len(t) * p))]
        print(f"{self.name:8s} n={len(t)} mean={statistics.mean(t):7.0f}us p50={q(0.5):7.0f}us "
              f"p90={q(0.9):7.0f}us p99={q(0.99):7.0f}us")
        return q(0.5), q(0.99)


def start_haproxy(work):
    """haproxy as a plain keep-alive passthrough to the demo bot, on a free port; None if not installed."""
    if not shutil.which("haproxy"):
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = os.path.join(work, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(haproxy_config(port, 8081))
    proc = subprocess.Popen(["haproxy", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("latency: haproxy did not start")


def main():
    work = tempfile.mkdtemp(prefix="botbridge-latency-")
    hap, hap_port = start_haproxy(work)
    try:
        paths = [Path("direct", 8081, "/api/chat", signed, csml),
                 Path("proxied", PROXY_PORT, "/chat", bearer, haptik)]
        if hap:
            paths.append(Path("haproxy", hap_port, "/api/chat", signed, csml))
        for p in paths:
            p.send(WARMUP, keep=False)
        done = 0
        while done < N:
            block = min(BLOCK, N - done)
            for p in paths:
                p.send(block)
            done += block
        d = paths[0].summary()
        b = paths[1].summary()
        h = paths[2].summary() if hap else None
        print(f"added by the proxy: p50 {b[0] - d[0]:.0f}us, p99 {b[1] - d[1]:.0f}us")
        if h:
            print(f"added by haproxy (passthrough, no work): p50 {h[0] - d[0]:.0f}us, p99 {h[1] - d[1]:.0f}us")
    finally:
        if hap:
            hap.terminate()
            hap.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
