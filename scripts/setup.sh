#!/usr/bin/env bash
# Set up w4s for development on a fresh Debian/Ubuntu machine: system packages, then .venv.
# Idempotent; safe to run again. PYTHON picks the interpreter (default python3, needs >= 3.11).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# bubblewrap: the sandbox; openssl: the tests make a throwaway TLS certificate with it; postgresql: the
# MLflow tests start a throwaway PostgreSQL server (Debian keeps initdb and postgres, which they use,
# in /usr/lib/postgresql/<version>/bin, off PATH).
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && ! command -v postgres >/dev/null 2>&1; then
    missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: ${missing[*]} missing and cannot be installed here; without bubblewrap the sandbox" \
            "runs degraded, without openssl the TLS transport test fails, without postgresql the" \
            "MLflow-on-PostgreSQL test fails" >&2
    fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $python is older than 3.11; set PYTHON to a Python 3.11+ interpreter" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch first and pinned, so that no dependency pulls a multi-GB CUDA build onto a CPU machine.
.venv/bin/python -m pip install -q 'torch==2.13.0'
.venv/bin/python -m pip install -q -e '.[all,dev]'
bash scripts/install_helm.sh  # helm + checkov for the chart tests (tests/charts)
