#!/usr/bin/env bash
# One prepared command for a short GPU slot: build, CUDA tests, benchmarks, under one deadline.
#
#   bench/gpu_check.sh RESULTS_DIR [--budget SECONDS] [--step-cap SECONDS] [--only STEP,...]
#                      [--skip STEP,...] [--bundle DIR] [--copy-rows | --no-copy-rows] [--dry-run]
#
# Runs from anywhere (it changes to the repository root) with $PYTHON (default python3);
# nothing is downloaded. The steps, most important first:
#
#   env         versions, GPU, git commit                          -> logs/env.log
#   build       GPU: pip install -e . (no build isolation, no index) for this GPU only
#               (TORCH_CUDA_ARCH_LIST = its capability), MAX_JOBS = all cores;
#               no GPU: the same compile and link into RESULTS_DIR/build (the installed
#               extension, which other processes may have loaded, is left alone)
#   tests       pytest -m "cuda and not slow"                      -> logs/pytest.log, pytest.xml
#   tests_slow  pytest -m "cuda and slow" --runslow --machine      -> logs/pytest_slow.log, .xml
#   ops_large   bench_ops.py --device cuda, large shapes (the attention target), bf16 + fp16
#   ops_model   bench_ops.py --device cuda --cuda-graph, model shapes, bf16 + fp16
#   fps         bench_fps.py ResNet-50 480x480, streaming + batched, fast vs reference
#   train       bench_train.py ResNet-50 480x480 batch 4, a few steps
#   eval        bench_eval.py on the CPU and CUDA
#
# Without a CUDA device the benchmarks run tiny CPU stand-ins (the plumbing, not figures)
# and the CUDA tests skip. Each step runs under `timeout`, for what is left of the budget
# (default 530 s) less the minimum kept for each later step, and at most its own cap (or
# --step-cap); a step that fails or runs out of time is recorded and the next one runs.
# Rows go to RESULTS_DIR/rows/ (on a GPU, or with --copy-rows, they are also appended to
# bench/results/ at the end), logs to RESULTS_DIR/logs/. After every step steps.tsv,
# summary.txt and summary.json in RESULTS_DIR are brought up to date
# (bench/results_summary.py), and with --bundle DIR, DIR receives summary.txt,
# summary.json and gpu_check.tar.gz (logs, rows, summary): three files, for a machine that
# hands back only a few. The summary table is printed last; the exit status is 1 when a
# step failed or ran out of time.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
ALL_STEPS=(env build tests tests_slow ops_large ops_model fps train eval)

usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

RESULTS="" BUDGET=530 STEP_CAP="" ONLY="" SKIP="" BUNDLE="" COPY=auto DRY=0
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --step-cap) STEP_CAP=${2:?--step-cap needs seconds}; shift ;;
    --only) ONLY=${2:?--only needs steps}; shift ;;
    --skip) SKIP=${2:?--skip needs steps}; shift ;;
    --bundle) BUNDLE=${2:?--bundle needs a folder}; shift ;;
    --copy-rows) COPY=yes ;;
    --no-copy-rows) COPY=no ;;
    --dry-run) DRY=1 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z $RESULTS ]] || die "one RESULTS_DIR only, got $RESULTS and $1"; RESULTS=$1 ;;
  esac
  shift
done
[[ -n $RESULTS ]] || die "usage: bench/gpu_check.sh RESULTS_DIR [options] (see --help)"
for value in "$BUDGET" ${STEP_CAP:+"$STEP_CAP"}; do
  [[ $value =~ ^[0-9]+$ && $value -gt 0 ]] || die "--budget and --step-cap take a whole number of seconds, got $value"
done
for name in ${ONLY//,/ } ${SKIP//,/ }; do
  [[ " ${ALL_STEPS[*]} " == *" $name "* ]] || die "unknown step '$name'; steps are: ${ALL_STEPS[*]}"
done

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "no Python '$PY' (set PYTHON)"
mkdir -p "$RESULTS/logs" "$RESULTS/rows" || die "cannot create $RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
ROWS=$RESULTS/rows LOGS=$RESULTS/logs
: >"$RESULTS/steps.tsv"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=10 # seconds kept for the summary and the bundle at the end

# GPU or CPU: decides the build and the benchmarks' settings
if GPU_ARCH=$("$PY" -c "import torch; assert torch.cuda.is_available(); print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null); then
  DEVICE=cuda
else
  DEVICE=cpu GPU_ARCH=""
fi
[[ $COPY == auto ]] && { [[ $DEVICE == cuda ]] && COPY=yes || COPY=no; }
NPROC=$(nproc 2>/dev/null || echo 2)

# Per step: most seconds it may take (cap) and least kept for it while earlier steps run (floor).
declare -A CAP FLOOR
if [[ $DEVICE == cuda ]]; then
  CAP=([env]=30 [build]=240 [tests]=200 [tests_slow]=120 [ops_large]=150 [ops_model]=90 [fps]=90 [train]=120 [eval]=45)
  FLOOR=([env]=5 [build]=60 [tests]=60 [tests_slow]=30 [ops_large]=60 [ops_model]=30 [fps]=30 [train]=40 [eval]=15)
else
  CAP=([env]=30 [build]=900 [tests]=300 [tests_slow]=120 [ops_large]=60 [ops_model]=60 [fps]=120 [train]=180 [eval]=60)
  FLOOR=([env]=3 [build]=30 [tests]=20 [tests_slow]=10 [ops_large]=8 [ops_model]=8 [fps]=15 [train]=25 [eval]=8)
fi

STEPS=()
for name in "${ALL_STEPS[@]}"; do
  [[ -n $ONLY && ",$ONLY," != *",$name,"* ]] && continue
  [[ ",$SKIP," == *",$name,"* ]] && continue
  STEPS+=("$name")
done

# --------------------------------------------------------------------------- the steps
step_env() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  cores: $NPROC  device: $DEVICE ${GPU_ARCH:+sm_${GPU_ARCH/./}}"
  echo "commit: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], sys.executable); print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import triton; print('triton', triton.__version__)" || echo "triton: not importable"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  if command -v nvidia-smi >/dev/null; then nvidia-smi; fi
}

step_build() {
  # torch's extension build finds ninja on PATH: the one installed beside this Python
  PATH=$("$PY" -c "import os, sys; print(os.path.dirname(sys.executable))"):$PATH
  if [[ $DEVICE == cuda ]]; then # installed in place: the tests and benchmarks import this build
    TORCH_CUDA_ARCH_LIST=$GPU_ARCH MAX_JOBS=$NPROC PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
      "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . || return
    "$PY" -c "import sys, pdnet.ops as ops; from pdnet import _C
print(f'pdnet._C with_cuda={_C.with_cuda}; backends on cuda: {ops.available_backends(\"cuda\")}')
sys.exit(0 if _C.with_cuda else 1)"
  else # compiled (objects in build/, shared with the install) and linked into RESULTS_DIR/build only
    MAX_JOBS=$NPROC "$PY" setup.py -q build_ext --build-lib "$RESULTS/build" || return
    "$PY" -c "import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location('pdnet._C', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(f'{sys.argv[1]} loads; with_cuda={module.with_cuda}')" "$RESULTS"/build/pdnet/_C*.so
  fi
}

pytest_step() { # $1: report name, then pytest's own arguments
  local name=$1
  shift
  local timeout_opt=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && timeout_opt=(--timeout=120) # one hung test must not take the step
  "$PY" -m pytest -v -rfEs -p no:cacheprovider --durations=15 "${timeout_opt[@]}" \
    --junitxml="$LOGS/$name.xml" "$@"
}
step_tests() { pytest_step pytest -m "cuda and not slow" tests; }
step_tests_slow() { pytest_step pytest_slow -m "cuda and slow" --runslow --machine tests; }

ops_bench() { # $1: the case kind on CUDA, $2: the CPU stand-in's cases, then bench_ops.py options for CUDA
  local kind=$1 cpu_cases=$2
  shift 2
  if [[ $DEVICE == cuda ]]; then
    "$PY" bench/bench_ops.py --device cuda --kinds "$kind" --dtype bf16 fp16 --warmup-ms 10 --rep-ms 40 \
      --out "$ROWS" "$@"
  else # $cpu_cases unquoted: one word per case
    "$PY" bench/bench_ops.py --kinds awkward --only $cpu_cases --modes fwd full --reps 2 --warmup 0 --threads 1 \
      --out "$ROWS"
  fi
}
step_ops_large() { ops_bench large "part_attention-odd_nq_ne_nk assemble_parts-odd" --modes fwd full; }
step_ops_model() { ops_bench model "part_masks-odd area_variance-odd" --cuda-graph --modes fwd grad full; }
step_fps() {
  if [[ $DEVICE == cuda ]]; then
    "$PY" bench/bench_fps.py --device cuda --backbone resnet50 --size 480 --batch 16 --iters 30 --warmup 5 --out "$ROWS"
  else
    "$PY" bench/bench_fps.py --device cpu --backbone resnet18 --size 64 --batch 2 --iters 1 --warmup 0 --threads 1 \
      --out "$ROWS"
  fi
}
step_train() {
  if [[ $DEVICE == cuda ]]; then
    "$PY" bench/bench_train.py --device cuda --backbone resnet50 --size 480 --batch 4 --steps 6 --warmup 2 \
      --out "$ROWS"
  else
    "$PY" bench/bench_train.py --device cpu --backbone resnet18 --size 64 --batch 1 --steps 1 --warmup 0 --out "$ROWS"
  fi
}
step_eval() {
  if [[ $DEVICE == cuda ]]; then
    "$PY" bench/bench_eval.py --device cpu cuda --repeats 5 --out "$ROWS"
  else
    "$PY" bench/bench_eval.py --device cpu --frames 4 --size 96x64 --repeats 1 --out "$ROWS"
  fi
}

# --------------------------------------------------------------------------- running them
record() { # step status rc seconds note
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS/steps.tsv"
  printf '[gpu_check] %-10s %-8s rc=%-4s %4ss  %s\n' "$@"
}

refresh() { # summary after every step; the bundle when asked for
  "$PY" bench/results_summary.py gpu-check "$RESULTS" >/dev/null 2>"$LOGS/summary.err" ||
    echo "[gpu_check] summary failed: $(tail -n 1 "$LOGS/summary.err")"
  if [[ -n $BUNDLE ]]; then
    mkdir -p "$BUNDLE" &&
      cp "$RESULTS/summary.txt" "$RESULTS/summary.json" "$BUNDLE/" &&
      tar -czf "$BUNDLE/gpu_check.tar.gz" -C "$RESULTS" logs rows steps.tsv summary.txt summary.json
  fi
}

later_floor() { # the seconds kept for the steps after step $1
  local sum=0 seen=0 s
  for s in "${STEPS[@]}"; do
    ((seen)) && sum=$((sum + FLOOR[$s]))
    [[ $s == "$1" ]] && seen=1
  done
  echo "$sum"
}

export PY ROOT RESULTS ROWS LOGS DEVICE GPU_ARCH NPROC PYTHONUNBUFFERED=1 # a killed step's log is complete
export -f pytest_step ops_bench "${ALL_STEPS[@]/#/step_}"
for name in "${ALL_STEPS[@]}"; do
  if [[ " ${STEPS[*]} " != *" $name "* ]]; then
    record "$name" skipped "" 0 "not selected (--only / --skip)"
    continue
  fi
  now=$(date +%s)
  left=$((DEADLINE - RESERVE - now))
  if ((left < 3)); then
    record "$name" skipped "" 0 "out of time (${left} s of the budget left)"
    continue
  fi
  limit=$((left - $(later_floor "$name"))) # but a step gets its own floor before later ones get theirs
  own=$((FLOOR[$name] < left ? FLOOR[$name] : left))
  ((limit < own)) && limit=$own
  ((limit > CAP[$name])) && limit=${CAP[$name]}
  [[ -n $STEP_CAP ]] && ((limit > STEP_CAP)) && limit=$STEP_CAP
  if ((DRY)); then
    record "$name" dry-run "" 0 "would run for at most ${limit} s on $DEVICE"
    continue
  fi
  echo "[gpu_check] $name: at most ${limit} s ($((DEADLINE - now)) s of the budget left)"
  log=$LOGS/${name/#tests/pytest}.log # the tests' logs beside pytest's reports: pytest.log, pytest.xml
  # in a shell of its own under timeout, which signals the step's whole process group
  timeout -k 5 "$limit" bash -c "step_$name" >"$log" 2>&1 </dev/null
  rc=$?
  secs=$(($(date +%s) - now))
  # a progress bar rewrites its line with carriage returns: keep its latest state, one line, no tabs
  last=$(tr '\r\t' '\n ' <"$log" | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-150)
  last=${last:-(no output)}
  case $rc in
    0) record "$name" ok 0 "$secs" "" ;;
    124 | 137) record "$name" timeout "$rc" "$secs" "stopped after ${limit} s; last line: $last" ;;
    *) record "$name" failed "$rc" "$secs" "$last" ;;
  esac
  refresh
done

if [[ $COPY == yes ]] && ((!DRY)); then # rows of a GPU run beside the committed ones
  "$PY" bench/results_summary.py copy "$ROWS" "$ROOT/bench/results"
fi
refresh
echo
echo "== gpu_check: $DEVICE, $(($(date +%s) - START)) s of a ${BUDGET} s budget; results in $RESULTS"
cat "$RESULTS/summary.txt"
# exit status: 1 when a step failed or ran out of time (skipped steps do not count)
if grep -q -E $'^[^\t]*\t(failed|timeout)\t' "$RESULTS/steps.tsv"; then exit 1; fi
