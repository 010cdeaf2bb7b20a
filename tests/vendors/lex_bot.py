"""An Amazon Lex V2 runtime bot for the tests: RecognizeText, with every request's AWS Signature V4
checked by botocore's own signer (not the proxy's code), so the proxy's signing is proven against
AWS's reference implementation.

Usage: lex_bot.py ACCESS_KEY_ID SECRET REGION [SESSION_TOKEN]. Prints `PORT <n>` once listening on
127.0.0.1. `GET /requests` lists what it received (path, body, signed header names).

Answer to a text: PlainText "Lex heard: <text>", an ImageResponseCard with an image and two buttons,
and a CustomPayload; `dialogAction` Close when the text is "bye", else ElicitIntent. A request
signed wrongly gets 403 InvalidSignatureException, as Lex answers it.
"""
import hmac
import json
import sys
import threading
import time
from calendar import timegm
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

KEY, SECRET, REGION = sys.argv[1], sys.argv[2], sys.argv[3]
TOKEN = sys.argv[4] if len(sys.argv) > 4 else None
RECEIVED = []
LOCK = threading.Lock()


def signature_problem(method, path, headers, body):
    """What is wrong with the request's signature, per botocore; None when it is right."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no SigV4 Authorization"
    parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    key, date, region, service, _ = parts["Credential"].split("/")
    amz_date = headers.get("x-amz-date", "")
    if (key, region, service) != (KEY, REGION, "lex") or date != amz_date[:8]:
        return "wrong credential scope"
    signed_at = timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    if abs(time.time() - signed_at) > 300:
        return "signature expired"
    names = parts["SignedHeaders"].split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed"
    if TOKEN is not None and headers.get("x-amz-security-token") != TOKEN:
        return "wrong session token"
    request = AWSRequest(method=method, url="http://%s%s" % (headers["host"], path), data=body,
                         headers={n: headers[n] for n in names})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(KEY, SECRET, TOKEN), "lex", REGION)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, parts["Signature"]):
        return "signature mismatch"
    return None


class Bot(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body, error_type=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with LOCK:
            self.answer(200, RECEIVED)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        problem = signature_problem("POST", self.path, headers, body)
        request = json.loads(body or b"{}")
        with LOCK:
            RECEIVED.append({"path": self.path, "body": request, "problem": problem,
                             "signed": headers.get("authorization", "").split("SignedHeaders=")[-1].split(",")[0]})
        if problem:
            return self.answer(403, {"message": problem}, "InvalidSignatureException")
        session = self.path.split("/sessions/")[1].rsplit("/text", 1)[0]
        text = request.get("text", "")
        self.answer(200, {
            "messages": [
                {"contentType": "PlainText", "content": "Lex heard: " + text},
                {"contentType": "ImageResponseCard", "imageResponseCard": {
                    "title": "Pick one", "imageUrl": "https://example.com/pick.png",
                    "buttons": [{"text": "Yes", "value": "yes"}, {"text": "No", "value": "no"}]}},
                {"contentType": "CustomPayload", "content": "{\"kind\": \"custom\"}"},
            ],
            "sessionState": {"dialogAction": {"type": "Close" if text == "bye" else "ElicitIntent"},
                             "intent": {"name": "Echo", "state": "InProgress", "slots": {"x": None}}},
            "sessionId": session,
            "requestAttributes": request.get("requestAttributes", {}),
        })

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Bot)
print("PORT %d" % server.server_port, flush=True)
server.serve_forever()
