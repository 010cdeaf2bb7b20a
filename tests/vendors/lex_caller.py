"""boto3's lexv2-runtime client as a caller of the proxy: one RecognizeText per call.

Usage: lex_caller.py '<JSON list of calls>'; each call is {"endpoint", "key", "secret", "session",
"text", "attributes"?}. Prints a JSON list with, per call, {"ok": <the response without its
ResponseMetadata>} or {"error": {"code", "message", "status"}}. No retries, so each call is one
request.
"""
import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

results = []
for call in json.loads(sys.argv[1]):
    client = boto3.client(
        "lexv2-runtime", endpoint_url=call["endpoint"], region_name=call.get("region", "us-east-1"),
        aws_access_key_id=call["key"], aws_secret_access_key=call["secret"],
        config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    args = dict(botId="ABCDEFGHIJ", botAliasId="TSTALIASID", localeId="en_US",
                sessionId=call["session"], text=call["text"])
    if call.get("attributes"):
        args["requestAttributes"] = call["attributes"]
    try:
        response = client.recognize_text(**args)
        response.pop("ResponseMetadata", None)
        results.append({"ok": response})
    except ClientError as e:
        results.append({"error": {"code": e.response["Error"]["Code"],
                                  "message": e.response["Error"]["Message"],
                                  "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}})
print(json.dumps(results))
