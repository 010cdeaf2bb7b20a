"""Google's Dialogflow CX client library (REST transport) as a caller of the proxy.

Usage: dialogflow_caller.py '<JSON list of calls>'; each call is {"endpoint", "project", "session",
"text" | "event", "parameters"?} with the credential as "key_file" (a service-account key: the
library signs its own JWT) or "token" (a static bearer token), or {"raw_jwt": {"key_file",
"claims"}, "endpoint", "project", "session", "text"} to send a hand-made JWT with requests (or
{"raw_token": "…", …} to send that bearer token so, or {"forged_iss": "…", …} an unsigned
JWT-shaped token naming that issuer).
Prints a JSON list: per call {"ok": <the response as JSON>} or {"error": {"code", "message"}}.
"""
import base64
import json
import sys

import google.auth.crypt
import google.auth.jwt
import google.oauth2.credentials
import requests
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import GoogleAPICallError
from google.cloud import dialogflowcx_v3
from google.oauth2 import service_account


def session_path(call):
    return "projects/%s/locations/global/agents/agent-1/sessions/%s" % (call["project"], call["session"])


def query_input(call):
    if "event" in call:
        return dialogflowcx_v3.QueryInput(event=dialogflowcx_v3.EventInput(event=call["event"]), language_code="en")
    return dialogflowcx_v3.QueryInput(text=dialogflowcx_v3.TextInput(text=call["text"]), language_code="en")


def library_call(call):
    if "key_file" in call:
        creds = service_account.Credentials.from_service_account_file(call["key_file"])
    else:
        creds = google.oauth2.credentials.Credentials(token=call["token"])
    client = dialogflowcx_v3.SessionsClient(credentials=creds, transport="rest",
                                            client_options=ClientOptions(api_endpoint=call["endpoint"]))
    params = None
    if call.get("parameters"):
        from google.protobuf import struct_pb2
        params = dialogflowcx_v3.QueryParameters(parameters=struct_pb2.Struct())
        params.parameters.update(call["parameters"])
    request = dialogflowcx_v3.DetectIntentRequest(session=session_path(call), query_input=query_input(call),
                                                  query_params=params)
    try:
        response = client.detect_intent(request=request, retry=None)
        return {"ok": json.loads(dialogflowcx_v3.DetectIntentResponse.to_json(response))}
    except GoogleAPICallError as e:
        return {"error": {"code": e.code, "message": e.message}}


def raw_call(call):
    if "forged_iss" in call:
        b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
        token = b64({"alg": "RS256", "typ": "JWT"}) + "." + b64({"iss": call["forged_iss"]}) + ".c2ln"
    elif "raw_token" in call:
        token = call["raw_token"]
    else:
        spec = call["raw_jwt"]
        info = json.load(open(spec["key_file"]))
        signer = google.auth.crypt.RSASigner.from_service_account_info(info)
        token = google.auth.jwt.encode(signer, spec["claims"]).decode()
    url = "%s/v3/%s:detectIntent" % (call["endpoint"], session_path(call))
    r = requests.post(url, json={"queryInput": {"text": {"text": call["text"]}, "languageCode": "en"}},
                      headers={"authorization": "Bearer " + token}, timeout=10)
    body = r.json()
    if r.status_code == 200:
        return {"ok": body}
    return {"error": {"code": r.status_code, "message": body["error"]["message"], "status": body["error"]["status"]}}


calls = json.loads(sys.argv[1])
raw = ("raw_jwt", "raw_token", "forged_iss")
print(json.dumps([raw_call(c) if any(k in c for k in raw) else library_call(c) for c in calls]))
