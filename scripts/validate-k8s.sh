#!/usr/bin/env bash
# Validates the Kubernetes manifests of deploy/k8s (scripts/k8s/check.py says what it checks)
# with kubernetes-validate from PyPI, in a throw-away virtual environment. Run by test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$(mktemp -d "${TMPDIR:-/tmp}/rask-k8s-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'jsonschema>=4.18,<5' 'PyYAML>=6,<7'
"$venv/bin/python" scripts/k8s/check.py
