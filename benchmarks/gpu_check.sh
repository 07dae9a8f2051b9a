#!/usr/bin/env bash
# The device check (benchmarks/gpu_check.py): `benchmarks/gpu_check.sh [--cpu-smoke] OUTDIR`.
# Runs with the machine's own interpreter (PYTHON, default python3) from the repository root,
# without installing anything: iclab is imported from src/.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
