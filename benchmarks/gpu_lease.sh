#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one short run, sized for a
# 15-minute lease of one H100/H200 (machine start included):
#
#   1. bank_scaling: every bank (256 to 1e6 memories) and variant (dense,
#      sparse, sampled) of a T5-base SPT step in bf16, in ONE process;
#   2. gpu_mfu: the SPT and prompt-tuning steps of T5-base in bf16 at
#      512/64 tokens, their MFU and their ratio.
#
# The device image has jax, flax, optax and orbax, not gin-config, seqio or
# TensorFlow; the benchmarks need only gin-config (pure Python), carried:
#
#   benchmarks/gpu_lease.sh --prepare     # here: copies gin into .device_deps/
#   # then, through the device tool, with carry=['.device_deps']:
#   OUT=$OUT benchmarks/gpu_lease.sh      # there: logs and JSON under $OUT
#
# SMOKE=1 runs both on CPU at a tiny size (a check of this script, with
# seqio and TensorFlow hidden as on the device image).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == --prepare ]]; then
  gin_dir=$("$PYTHON" -c 'import gin, os; print(os.path.dirname(gin.__file__))')
  rm -rf .device_deps && mkdir -p .device_deps
  cp -r "$gin_dir" .device_deps/gin
  echo "Prepared .device_deps/ (gin-config); carry it to the device machine."
  exit 0
fi

OUT=${OUT:-$REPO/benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$REPO:$REPO/.device_deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [[ "${SMOKE:-0}" == 1 ]]; then
  # The device image's view: no seqio, no TensorFlow.
  export PYTHONPATH="$REPO/tests/device_image:$PYTHONPATH"
  export JAX_PLATFORMS=cpu
  banks=(--platform=cpu --size=tiny --model_partitions=2 --batch=4
         --banks=256:2,1000:2 --repeats=1)
  mfu=(--allow_cpu --peak_tflops=1 --size=tiny --batch=2 --inputs=32
       --targets=8 --repeats=1)
  limit=300
else
  banks=(--platform=gpu --dtype=bfloat16 --repeats=3)
  mfu=(--repeats=10)
  limit=330
fi

started=$(mktemp)
"$PYTHON" -c 'import jax; print("devices:", jax.devices())' | tee "$OUT/devices.log"
timeout "$limit" "$PYTHON" -m benchmarks.bank_scaling --in_process "${banks[@]}" \
  2>&1 | tee "$OUT/bank_scaling.log" || echo "bank_scaling ended early: $?"
timeout "$limit" "$PYTHON" -m benchmarks.gpu_mfu --variants=spt,prompt_tuning \
  "${mfu[@]}" 2>&1 | tee "$OUT/gpu_mfu.log" || echo "gpu_mfu ended early: $?"
# The JSON results this run wrote (a smoke run's do not stay in the repo).
if [[ "$OUT" != "$REPO/benchmarks/results" ]]; then
  find benchmarks/results -name '*.json' -newer "$started" -exec cp {} "$OUT"/ \;
fi
if [[ "${SMOKE:-0}" == 1 ]]; then
  find benchmarks/results -name '*.json' -newer "$started" -delete
fi
rm -f "$started"
