"""A Google Dialogflow CX agent and its OAuth2 token endpoint, for the tests. The token endpoint
checks each JWT-bearer grant with google-auth's own JWT code (signature against the service
account's public key, audience = this endpoint, expiry), so the proxy's minting is proven against
Google's reference implementation; the agent answers only requests carrying a token it minted.

Usage: dialogflow_bot.py CLIENT_EMAIL PUBLIC_KEY_PEM_FILE [TOKEN_LIFETIME_S]. Prints `PORT <n>`.
`GET /requests` gives {"mints": <tokens minted>, "requests": [{path, body, token_ok}]}.

Answer to a text: "Agent heard: <text>", "Pick one" with chips Yes/No, an image, and
endInteraction when the text is "bye".
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import google.auth.jwt

EMAIL, PUBLIC = sys.argv[1], open(sys.argv[2]).read()
LIFETIME = int(sys.argv[3]) if len(sys.argv) > 3 else 3600
STATE = {"mints": 0, "requests": [], "tokens": {}}
LOCK = threading.Lock()


class Agent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            self.answer(200, {"mints": STATE["mints"], "requests": STATE["requests"]})

    def token(self, body):
        form = parse_qs(body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return self.answer(400, {"error": "unsupported_grant_type"})
        audience = "http://%s/token" % self.headers["host"]
        try:
            claims = google.auth.jwt.decode(form["assertion"][0], certs=PUBLIC, audience=audience)
        except Exception as e:  # google-auth refused it
            return self.answer(400, {"error": "invalid_grant", "error_description": str(e)})
        if claims.get("iss") != EMAIL or "cloud-platform" not in claims.get("scope", ""):
            return self.answer(400, {"error": "invalid_grant", "error_description": "iss or scope"})
        with LOCK:
            STATE["mints"] += 1
            token = "ya29.test-%d" % STATE["mints"]
            STATE["tokens"][token] = time.time() + LIFETIME
        self.answer(200, {"access_token": token, "expires_in": LIFETIME, "token_type": "Bearer"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/token":
            return self.token(body)
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        with LOCK:
            ok = STATE["tokens"].get(token, 0) > time.time()
            STATE["requests"].append({"path": self.path, "body": json.loads(body or b"{}"), "token_ok": ok})
        if not ok:
            return self.answer(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}})
        query = json.loads(body)["queryInput"]
        said = query.get("text", {}).get("text") or "event " + query.get("event", {}).get("event", "")
        messages = [
            {"text": {"text": ["Agent heard: " + said]}},
            {"text": {"text": ["Pick one"]}},
            {"payload": {"richContent": [[{"type": "chips", "options": [{"text": "Yes"}, {"text": "No"}]},
                                          {"type": "image", "rawUrl": "https://example.com/agent.png"}]]}},
        ]
        if said == "bye":
            messages.append({"endInteraction": {}})
        self.answer(200, {"responseId": "r-1", "queryResult": {
            "text": said, "languageCode": query.get("languageCode", "en"),
            "responseMessages": messages, "match": {"matchType": 1}, "currentPage": {"displayName": "Start"}}})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Agent)
print("PORT %d" % server.server_port, flush=True)
server.serve_forever()
