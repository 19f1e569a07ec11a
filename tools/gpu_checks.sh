#!/usr/bin/env bash
# GPU measurements that the CPU cannot make, each part sized to finish inside one 10-minute call on a borrowed
# GPU machine (not a user's entry point: users run the launchers themselves).
#
#   bash tools/gpu_checks.sh wheels           # beforehand, on a machine with the network: wheels of what the GPU
#                                             # image lacks -> .whl/
#   bash tools/gpu_checks.sh tiny  OUT_DIR    # at most 9 min on one H200: trains candidates for the shipped model
#                                             # side by side (TINY_CANDIDATES, patch:depth, default "4:3", the shipped
#                                             # model's size; 6 min alone) and packs each run (export/, metrics, loss
#                                             # curve, log) as OUT_DIR/<name>.tgz.*
#   bash tools/gpu_checks.sh bench OUT_DIR    # at most 9.5 min: FLAV-B/1 training without remat in 8 and in 4
#                                             # micro-batches (4 also with region-based copy insertion), profiles of
#                                             # training and of the forward pass (BENCH_TRAIN=0 skips these; 7 min),
#                                             # and the whole sampling command at 1 and 4 streams on stand-in weights
#                                             # (launch.make_standins; BENCH_E2E=0 skips it)
#   DRY=1 bash tools/gpu_checks.sh tiny /tmp/out   # the same steps at toy sizes, with the requirements installed
#                                                  # here (tests/test_gpu_checks.py runs it)
#
# GPU images often lack ml_collections, librosa (and soundfile's cffi) and PyAV: `wheels` downloads them (the
# versions installed here) into .whl/, which each part installs from when the folder exists (copy it to the GPU
# machine beside the tree). Each step has its own time limit and a failed step does not stop the others; the last
# lines printed are a summary. After `tiny`, unpack a run (cat OUT/p4d3.tgz.* | tar xz) and measure it as the
# README measures the shipped model:
#   python -m launch.evaluate --config.checkpoint=export --config.model.patch_size=4 --config.model.depth=3 \
#       --config.sample.label=0 --mode=joint --seconds=30 --streams=16   # 16: a 4-stream mean is uncertain by 0.1
set -uo pipefail
part=${1:?"usage: bash tools/gpu_checks.sh wheels|tiny|bench [OUT_DIR]"}
out=${2:-}
dry=${DRY:-0}
python=${PYTHON:-python3}  # the interpreter that runs the launchers
summary=()

note() { summary+=("$*"); echo "== $*"; }

# run NAME SECONDS COMMAND...: the command under a time limit (SIGTERM first: training saves and exports), logged.
# No run goes past DEADLINE_S seconds from the start (default 560, inside one 600 s call), so the summary prints.
run() {
  local name=$1 seconds=$2; shift 2
  local start=$SECONDS left=$((${DEADLINE_S:-560} - SECONDS))
  if [ "$left" -lt 30 ]; then
    note "$name: skipped, $left s left before the deadline"
    return 1
  fi
  [ "$seconds" -gt "$left" ] && seconds=$left
  timeout -k 20 "$seconds" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  note "$name: exit $rc after $((SECONDS - start)) s (log $out/$name.log)"
  tail -n 3 "$out/$name.log"
  return $rc
}

install_wheels() {
  if [ -d .whl ] && [ "$dry" != 1 ]; then  # DRY runs where requirements.txt is installed
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 1
    export PYTHONPATH=/tmp/site:.
  fi
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"
}

case $part in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    specs=$("$python" -c "import importlib.metadata as m
print(' '.join(f'{n}=={m.version(n)}' for n in ('ml_collections', 'librosa', 'audioread', 'decorator', 'pooch',
                                                'platformdirs', 'soundfile', 'cffi', 'pycparser', 'soxr', 'av')))")
    rm -rf .whl
    # shellcheck disable=SC2086
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $specs || exit 1
    du -sh .whl
    exit 0 ;;
  tiny|bench) [ -n "$out" ] || { echo "usage: bash tools/gpu_checks.sh $part OUT_DIR"; exit 2; } ;;
  *) echo "unknown part $part: expected wheels, tiny or bench"; exit 2 ;;
esac
mkdir -p "$out"
work=$(mktemp -d)
install_wheels

if [ "$part" = tiny ]; then
  # The :gpu recipe (batch 64, 16000 steps, lr 4e-4, EMA 0.9995) at each candidate's patch size and depth; 4:3, the
  # shipped model, is 0.92 TFLOP per step (245 s for its 16000 steps alone on an H200, 2026-11-30). Candidates train
  # side by side on the one GPU.
  config=configs/train_synthetic_tiny.py:gpu
  extra=()
  budget=${TINY_BUDGET_S:-500}
  if [ "$dry" = 1 ]; then
    config=configs/train_synthetic_tiny.py:micro; budget=${TINY_BUDGET_S:-300}
  fi
  [ -n "${TINY_STEPS:-}" ] && extra+=("--config.train.num_steps=$TINY_STEPS")
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.3  # several runs share the GPU
  names=()
  for candidate in ${TINY_CANDIDATES:-4:3}; do
    name=p${candidate%%:*}d${candidate##*:}
    names+=("$name")
    run "$name" "$budget" "$python" -m launch.train --config="$config" --workdir="$work/$name" \
      --config.model.patch_size="${candidate%%:*}" --config.model.depth="${candidate##*:}" "${extra[@]}" &
  done
  wait
  for name in "${names[@]}"; do
    cp "$out/$name.log" "$work/$name/train.log" 2>/dev/null
    if [ -d "$work/$name/export" ]; then
      tar czf - -C "$work/$name" export metrics.jsonl loss_curve.png train.log | split -b 15m - "$out/$name.tgz."
      note "$name: $(tail -n 1 "$work/$name/metrics.jsonl")"
      rm -f "$out/$name.log"  # inside the archive
    else
      note "$name: no export (see its log)"
    fi
  done
fi

if [ "$part" = bench ]; then
  card=h100
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -q H200 && card=h200
  bench=("$python" -m launch.benchmark --config="configs/bench_b1.py:$card" --compare)
  model=()
  frames=40
  if [ "$dry" = 1 ]; then
    bench=("$python" -m launch.benchmark --config=configs/bench_cpu.py:short --config.train_batch=8)
    model=(--config.model.preset=FLAV-S/8)
    frames=4
  fi
  # Training without remat, the batch of 8 as 8 or 4 accumulated micro-batches of 1 or 2: the no-remat step's speed
  # in a fraction of its memory? (No remat and both remat policies: measured 2026-11-27 and 2026-11-30.) Then where
  # the time of a training step and of a forward pass goes: profiles by kind of kernel (rflav_jax.profiling), their
  # Perfetto traces copied to OUT_DIR/profile_<measure>.json.gz.
  if [ "${BENCH_TRAIN:-1}" = 1 ]; then  # BENCH_TRAIN=0: the end-to-end runs alone
    run train_accumulate_8 150 "${bench[@]}" --only=train --output="$out/train_accumulate_8.json" \
      --config.train_accumulate_steps=8 --profile_dir="$work/profile"
    run train_accumulate_4 150 "${bench[@]}" --only=train --output="$out/train_accumulate_4.json" \
      --config.train_accumulate_steps=4
    # The same with XLA's region-based copy insertion, which on CPUs updates the donated state in place
    # (rflav_jax.train.step.COMPILER_OPTIONS): does the GPU's option save the state's copies (up to 3 x 1.3 GB)?
    run train_accumulate_4_region 150 env XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_copy_insertion_use_region_analysis=true" \
      "${bench[@]}" --only=train --output="$out/train_accumulate_4_region.json" --config.train_accumulate_steps=4
    run forward_profile 90 "${bench[@]}" --only=forward --output="$out/forward_profile.json" \
      --profile_dir="$work/profile"
    for measure in train forward; do
      trace=$(find "$work/profile/$measure" -name perfetto_trace.json.gz 2>/dev/null | head -n 1)
      [ -n "$trace" ] && cp "$trace" "$out/profile_$measure.json.gz"
    done
  fi
  # End to end: FLAV-B/1 + SD-VAE + HiFi-GAN on random weights of the releases' shapes; the `stages:` line of each
  # run says which stage limits it. The last run finds its programs in the persistent compilation cache
  # (config.compilation_cache_dir) that the one before filled: its stages are the steady state.
  if [ "${BENCH_E2E:-1}" = 1 ]; then  # BENCH_E2E=0: the training lines alone
    run standins 180 "$python" -m launch.make_standins --output_dir="$work/standins" "${model[@]}"
    for spec in "1 $frames" "4 $frames" "4 $((3 * frames))"; do
      read -r streams n <<<"$spec"
      name=sample_${streams}_streams_${n}_frames
      run "$name" 100 "$python" -m launch.sample --config=configs/flav_b1_aist.py \
        --config.checkpoint="$work/standins/flav" --config.codec.checkpoint="$work/standins/sdvae" \
        --config.vocoder.checkpoint="$work/standins/vocoder" --config.sample.num_streams="$streams" \
        --config.sample.num_frames="$n" --config.sample.chunk_frames=20 --output_dir="$work/$name" "${model[@]}"
      grep -q 'stages:' "$out/$name.log" 2>/dev/null &&
        note "$name: $(grep -h 'stages:' "$out/$name.log" | sed 's/.*stages:/stages:/')"
    done
  fi
  for json in "$out"/*.json; do
    [ -f "$json" ] && note "$(basename "$json"): $("$python" -c "import json, sys
for r in json.load(open(sys.argv[1])):
  print(r['measure'], r.get('samples_per_s'), 'samples/s, peak', r.get('peak_gb'), 'GB, compile', r.get('compile_s'), 's')
  if 'profile' in r:
    total = r['profile']['total_ms']
    print('  profile:', ', '.join(f'{k} {ms / total:.1%}' for k, ms in r['profile']['kinds'].items()), f'of {total:.0f} ms')
" "$json")"
  done
fi

rm -rf "$work"
echo
echo "summary ($part, $(date -u +%FT%TZ)):"
printf '  %s\n' "${summary[@]}"
