#!/usr/bin/env bash
# Creates the virtualenv with the vendors' clients the tests use (tests/vendors/requirements.txt)
# and prints its python. Installed once per set of requirements: the virtualenv's name carries
# their digest, so a change installs a new one. BOTBRIDGE_VENDORS_VENV overrides the place.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
digest=$(sha256sum "$here/requirements.txt" | cut -c1-12)
venv=${BOTBRIDGE_VENDORS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/botbridge-vendors-$digest}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import boto3, google.cloud.dialogflowcx_v3, opentelemetry.proto' >/dev/null 2>&1; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
fi
echo "$venv/bin/python"
