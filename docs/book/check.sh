#!/usr/bin/env bash
# Builds the documentation book strictly: a link to a missing page or a missing anchor, a page left
# out of the navigation, or any other MkDocs warning fails the build (and this script).
# MkDocs comes from docs/book/requirements.txt, in a virtualenv under ~/.cache (BOOK_VENV=dir picks
# another); the site is written to target/book.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${BOOK_VENV:-$HOME/.cache/botbridge/mkdocs-venv}"
stamp="$venv/requirements.txt"
if [ ! -x "$venv/bin/mkdocs" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
cd "$here/../.."
"$venv/bin/mkdocs" build --strict -f docs/book/mkdocs.yml
