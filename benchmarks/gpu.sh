#!/usr/bin/env bash
# The whole GPU measurement of issues 3 and 20 in under 8 minutes on one H100/H200: run from the repository
# root on the GPU machine, commit its output to benchmarks/ and the figures to RESULTS.md.
# Every `idml bench --json` object goes to stdout (one per line) and, when $OUT is set, to $OUT/.
# Each run has its own time limit, so that a slow compile cannot push the script past 8 minutes.
# Every run names --device cuda: without a visible GPU it fails instead of timing the CPU. A run that
# fails or times out says so on stderr (its own stderr is kept in $OUT/<name>.stderr) and makes the
# script's exit status non-zero; no empty JSON is ever copied as a result.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEADLINE=${DEADLINE:-470}   # seconds for the whole script
# a private folder by default (a fixed name under /tmp is one where others can plant links)
LOGS=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/idml-gpu.XXXXXX")}
mkdir -p "$LOGS"
set -o noclobber   # `>` never replaces an existing file, nor writes through a planted link
FAILED=0
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
echo "# date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true
"$PYTHON" -c 'import torch; print("# torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

bench() {  # bench NAME LIMIT_SECONDS FLAGS...
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  (( limit > left )) && limit=$left
  if (( limit < 30 )); then echo "# $name: skipped, ${left}s left" >&2; FAILED=1; return; fi
  echo "# $name (limit ${limit}s): idml bench --device cuda $*"
  local start=$SECONDS json="$LOGS/$name.json.partial" log="$LOGS/$name.stderr"
  rm -f "$json" "$log"   # of an earlier run into the same $OUT (rm removes a link, not its target)
  timeout "$limit" "$PYTHON" -m idml bench --json --device cuda "$@" > "$json" 2> "$log"
  local rc=$?
  if (( rc == 0 )) && [[ -s "$json" ]]; then
    cat "$json"
    mv -T "$json" "$LOGS/$name.json"   # -T: a link planted there is replaced, never followed
  else
    local why="exit $rc"; (( rc == 124 )) && why="timed out after ${limit}s"
    echo "# $name: FAILED ($why); no result written; its stderr:" >&2
    tail -n 20 "$log" >&2
    rm -f "$json"
    FAILED=1
  fi
  echo "# $name: exit $rc after $((SECONDS - start))s"
}

# --devices on CUDA (docs/cluster.md): auto starts one process per visible GPU and splits the total
# batch; asking for one GPU more than visible is one line and exit 2. About 30 s.
devices_check() {
  local gpus digits=(--dataset digits --net_type resnet --depth 8 --no-bottleneck --device cuda --epochs 1
                     --no-verbose --output_dir "$LOGS/devices")
  gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
  echo "# devices: $gpus visible GPU(s)"
  if timeout 120 "$PYTHON" -m idml train "${digits[@]}" --devices auto --batch_size $((32 * gpus)) --expname auto \
      > "$LOGS/devices-auto.out" 2>&1; then
    grep -m1 -E "DDP processes|training on" "$LOGS/devices-auto.out"
  else
    echo "# devices auto: FAILED" >&2; tail -n 20 "$LOGS/devices-auto.out" >&2; FAILED=1
  fi
  local rc=0
  timeout 60 "$PYTHON" -m idml train "${digits[@]}" --devices $((gpus + 1)) --expname more > "$LOGS/devices-more.out" 2>&1 \
    || rc=$?
  if (( rc == 2 )) && grep -q "only $gpus CUDA GPU(s) are visible" "$LOGS/devices-more.out"; then
    echo "# devices $((gpus + 1)): refused in one line, as expected"
  else
    echo "# devices $((gpus + 1)): FAILED (exit $rc)" >&2; cat "$LOGS/devices-more.out" >&2; FAILED=1
  fi
}
devices_check

R50=(--net_type resnet --dataset imagenet --depth 50 --batch_size 256 --beta 1.0 --cutmix_prob 1.0)
PIPE=(--input_pipeline --dataset imagenet --net_type resnet --depth 50 --batch_size 256 --images 2048 --steps 3
      --warmup 1)

# The ImageNet input pipeline alone (issue 20; images/s per GPU, and the CPU cores it keeps busy:
# "cores_busy", "images_per_cpu_second"), on photos made by make_photos.py: --decode gpu (the
# workers only read the files; nvJPEG decodes) with 4 workers, and --decode cpu beside the
# official worker transform with 8 workers.
PHOTOS=$(mktemp -d)  # 110 MB of JPEGs: not under $OUT, which comes back from the GPU machine
trap 'rm -rf "$PHOTOS"' EXIT
echo "# photos: $PYTHON benchmarks/make_photos.py --out $PHOTOS --count 2048"
"$PYTHON" benchmarks/make_photos.py --out "$PHOTOS" --count 2048 || FAILED=1
bench pipeline-gpu-decode 45 "${PIPE[@]}" --data_dir "$PHOTOS" -j 4 --decode gpu --variants idml
bench pipeline-cpu-decode 45 "${PIPE[@]}" --data_dir "$PHOTOS" -j 8 --decode cpu --variants idml,official
P110=(--net_type pyramidnet --dataset cifar10 --depth 110 --alpha 48 --no-bottleneck --batch_size 128
      --beta 1.0 --cutmix_prob 0.5)
P200=(--net_type pyramidnet --dataset cifar10 --depth 200 --alpha 240 --batch_size 64 --beta 1.0 --cutmix_prob 0.5)

# ResNet-50 batch 256 (uint8 batches through the on-device colour jitter, lighting and normalisation):
# the standard variants, and one change at a time from fp32-eager
bench resnet50 110 "${R50[@]}" --steps 20 --warmup 3 \
  --variants fp32-eager,default,default-linear,channels_last,bf16
# the same with torch.compile in the default settings (compile time: first_step_seconds)
bench resnet50-compile 170 "${R50[@]}" --steps 20 --warmup 3 --compile --variants fp32-eager,default
bench pyramidnet110 60 "${P110[@]}" --steps 20 --warmup 3
bench pyramidnet200 70 "${P200[@]}" --steps 10 --warmup 3
bench pyramidnet110-compile 200 "${P110[@]}" --steps 20 --warmup 3 --compile --variants fp32-eager,default
echo "# total ${SECONDS}s"
exit $FAILED
