#!/usr/bin/env bash
# The GPU check of gradlens (one command, no network needed), run from the repository root on a
# machine with an NVIDIA GPU (driver with CUDA >= 13.0):
#
#   cargo build --release --features cuda -p gradlens-cli     # anywhere, no CUDA toolkit needed
#   scripts/gpu_check.sh                                      # on the GPU machine
#
# 1. parity: every committed fixture (7 checkpoints, 5 families; the tiny data and the paper's
#    first aqua samples) measured with --backend cuda in f32, dense and factored spectra, against
#    the transformers float64 reference at rtol 1e-4 (`gradlens check`);
# 2. the CLI path: `gradlens grads --backend cuda` on one fixture, compared with `gradlens compare`
#    (a second process: kernels come from the compilation cache under target/);
# 3. the benchmark on a random checkpoint of Qwen2-1.5B's shape over the first $SAMPLES aqua
#    Detailed-CoT samples: forward+backward alone, factored spectra (split), end to end (auto,
#    pipelined), and, when torch and transformers import, the paper's method (PyTorch, full SVD on
#    the GPU) on the same weights and the first $REF_SAMPLES of the same samples;
# 4. the same on Llama-3.1-8B's shape (fewer samples), for its rate and peak GPU memory.
# A short table is printed at the end; logs and JSON go to $OUT (default target/gpu-check).
#
# Budget time: the first CUDA run on a machine compiles kernels; without autotuning (the `cuda`
# feature's default since 2026-11-27) that is seconds per new shape on an H100 (8.3 s for the tiny
# fixture's first sample, 11 s for Qwen2-1.5B's), with `cuda-autotune` minutes. cubecl.toml keeps
# compiled kernels under target/ for later runs. The timeouts below are generous on purpose; the
# logs show each sample's progress (RUST_LOG=gradlens=debug). scripts/gpu_short.sh is the same
# cut to a 15-minute lease.
#
# Environment: GRADLENS (binary, default target/release/gradlens), DATA (paper data root, default
# ../shared/paper-data), SAMPLES (50), REF_SAMPLES (3), SKIP_8B=1, PYTHON (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${GRADLENS:-target/release/gradlens}
OUT=${OUT:-target/gpu-check}
DATA=${DATA:-../shared/paper-data}
SAMPLES=${SAMPLES:-50}
REF_SAMPLES=${REF_SAMPLES:-3}
PYTHON=${PYTHON:-python3}
AQUA="$DATA/cot_500/aqua_train_with_cot_gpt4o.json"
mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-gradlens=debug}
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nproc | sed 's/^/CPU cores: /'
$BIN --version

parity() { # tag paper-data-root timeout
    step "parity ($1) of --backend cuda (f32) against the float64 fixtures, rtol 1e-4"
    local t0=$(date +%s)
    timeout "$3" $BIN check --backend cuda --dtype f32 --paper-data "$2" \
        >"$OUT/parity-$1.txt" 2>"$OUT/parity-$1.log"
    local rc=$?
    if grep -q "doesn't have the right format" "$OUT/parity-$1.log"; then
        echo "cubecl.toml rejected: retrying without it"; mv cubecl.toml cubecl.toml.rejected
        timeout "$3" $BIN check --backend cuda --dtype f32 --paper-data "$2" \
            >"$OUT/parity-$1.txt" 2>"$OUT/parity-$1.log"
        rc=$?
    fi
    grep -v "skipped:" "$OUT/parity-$1.log" | tail -n 45
    cat "$OUT/parity-$1.txt"
    echo "parity ($1): exit $rc in $(( $(date +%s) - t0 )) s"
    [ $rc -eq 0 ] || status=1
    PARITY="$PARITY [$1: exit $rc in $(( $(date +%s) - t0 )) s, $(tail -n 1 "$OUT/parity-$1.txt" 2>/dev/null | head -c 100)]"
}
PARITY=""
# 1a. The tiny data of every fixture (sequences up to 96 tokens).
parity tiny /nonexistent "${PARITY_TIMEOUT:-1800}"

step "2. gradlens grads --backend cuda (a new process) + gradlens compare"
t0=$(date +%s)
rm -f "$OUT/cli.jsonl" "$OUT/cli.skipped.jsonl"
timeout "${CLI_TIMEOUT:-900}" $BIN grads --backend cuda --model fixtures/gemma2-tiny --data fixtures/data/tiny.json \
    --max-length 96 --out "$OUT/cli.jsonl" --quiet 2>&1 | grep -v "skipped:" | tail -n 3
$BIN compare --expected fixtures/gemma2-tiny/expected/grads.jsonl --actual "$OUT/cli.jsonl" --rtol 1e-4
rc=$?
echo "cli: exit $rc in $(( $(date +%s) - t0 )) s (second process: compiled kernels from the cache)"
[ $rc -eq 0 ] || status=1
CLI="exit $rc in $(( $(date +%s) - t0 )) s"

bench() { # name config samples seq ref warmup timeout tokenizer
    step "bench $1: $3 samples (+$6 warm-up), sequential $4, reference $5, tokenizer $8"
    timeout "$7" $BIN bench --backend cuda --threads 0 --model "$2" --data "$AQUA" --tokenizer "$8" \
        --samples "$3" --sequential-samples "$4" --reference-samples "$5" --warmup "$6" \
        --rows fwd-bwd,factored,auto,paper --python "$PYTHON" --workdir target/bench \
        --json "$OUT/bench-$1.json" >"$OUT/bench-$1.txt" 2>"$OUT/bench-$1.log"
    local rc=$?
    tail -n 12 "$OUT/bench-$1.log"
    cat "$OUT/bench-$1.txt"
    echo "bench $1: exit $rc"
}
# Realistic lengths: the 32k BPE of configs/tokenizer (aqua Detailed CoT: mean ~520 tokens).
bench qwen2-1.5b configs/shapes/qwen2-1.5b.json "$SAMPLES" 5 "$REF_SAMPLES" 2 "${BENCH_TIMEOUT:-2400}" configs/tokenizer
if [ -z "${SKIP_8B:-}" ]; then
    # Worst case for memory: the fixtures' 600-token vocabulary makes every aqua sample longer
    # than 1024 tokens, so every sample is truncated at max_length 1024.
    bench llama-3.1-8b configs/shapes/llama-3.1-8b.json 5 2 1 1 "${BENCH8B_TIMEOUT:-1800}" fixtures/qwen2-tiny
fi

# 1b. The paper's first aqua samples (up to 1024 tokens) of every fixture, in the time left.
if [ -z "${SKIP_PAPER_PARITY:-}" ]; then
    parity paper "$DATA" "${PAPER_PARITY_TIMEOUT:-1800}"
fi

step "summary"
echo "GPU:    $(head -n 1 "$OUT/gpu.txt")"
echo "parity: $PARITY"
echo "cli:    $CLI"
for f in "$OUT"/bench-*.txt; do [ -s "$f" ] && cat "$f"; done
exit $status
