#!/usr/bin/env bash
# The prepared GPU check: parity with the reference on the device (fp32 against the goldens, fp16/bf16 within
# the tolerances stated in tests/test_parity.py), `smite bench --json` on SD 2.1 with random weights and on the
# tiny backbone, and a NaN/inf check on every segmentation output. One JSON object per line per check;
# exit status 0 only if every check has "ok": true.
#
#   tools/gpu_check.sh                      # on CUDA, full size (<= 8 minutes on one H100)
#   tools/gpu_check.sh --device cpu --small # reduced sizes, about a minute on a CPU (what CI runs)
#
# Runs with $PYTHON (default: python) from an environment with the project installed (pip install -e ".[test]").
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda
small=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="${2:?--device needs cuda or cpu}"; shift 2 ;;
    --device=*) device="${1#--device=}"; shift ;;
    --small) small=(--small); shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (use --device cuda|cpu and --small)" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cuda:*|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MKL_CBWR="${MKL_CBWR:-AUTO,STRICT}"
exec "${PYTHON:-python}" tools/gpu_check.py --device "$device" "${small[@]}"
