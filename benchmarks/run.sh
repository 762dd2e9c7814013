#!/usr/bin/env bash
# The standard benchmark set of issue 3, on this machine's GPU if it has one, else its CPU.
# Prints one `idml bench --json` object per line (and writes them to $OUT, default benchmarks/out/).
#   PyramidNet-110 (alpha 48, basic), CIFAR-shape, batch 128
#   PyramidNet-200 (alpha 240, bottleneck), CIFAR-shape, batch 64
#   ResNet-50, ImageNet-shape (224 px), batch 32 on the CPU, 256 on a GPU
# Each variant runs in its own worker process, in shuffled rounds, with an A/A check (docs/benchmarks.md).
# Environment: PYTHON (default: python), STEPS (timed steps per variant, default 10), EXTRA (more
# `idml bench` flags for every model, e.g. "--compile" or "--variants fp32-eager,default,compile"),
# IDML_OFFICIAL_DIR (your checkout of the official code: then the official step is timed beside idml's).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-10}
OUT=${OUT:-benchmarks/out}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
set -o noclobber   # `>` never replaces an existing file, nor writes through a planted link
stamp=$(date -u +%Y%m%dT%H%M%SZ)
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  resnet_batch=256
else
  resnet_batch=32
fi
cifar_mix=(--beta 1.0 --cutmix_prob 0.5)   # the official CIFAR IDML-CutMix command's mixing
bench() {
  local name=$1; shift
  # shellcheck disable=SC2086  # EXTRA is a list of flags
  "$PYTHON" -m idml bench --steps "$STEPS" --json "$@" ${EXTRA:-} > "$OUT/$name-$stamp.json"
  cat "$OUT/$name-$stamp.json"
}
bench pyramidnet110 --net_type pyramidnet --dataset cifar10 --depth 110 --alpha 48 --no-bottleneck \
  --batch_size 128 "${cifar_mix[@]}"
bench pyramidnet200 --net_type pyramidnet --dataset cifar10 --depth 200 --alpha 240 --batch_size 64 "${cifar_mix[@]}"
bench resnet50 --net_type resnet --dataset imagenet --depth 50 --batch_size "$resnet_batch" --beta 1.0 --cutmix_prob 1.0
if [[ -n "${IDML_OFFICIAL_DIR:-}" ]]; then
  "$PYTHON" benchmarks/official_step.py --steps "$STEPS" --json > "$OUT/official-step-$stamp.json"
  cat "$OUT/official-step-$stamp.json"
fi
