#!/usr/bin/env bash
# A short GPU check for a time-boxed lease (about 5 minutes of commands on an H100): what
# scripts/gpu_check.sh does, cut to fit, in the order of what it tells most.
#
#   cargo build --release --features cuda -p gradlens-cli      # here, no CUDA toolkit needed
#   mkdir -p .gpu && strip -o .gpu/gradlens target/release/gradlens
#   cp ../shared/paper-data/cot_500/aqua_train_with_cot_gpt4o.json .gpu/aqua.json
#   scripts/gpu_short.sh                                       # there (carry .gpu)
#
# 1. the first samples of the tiny Qwen2 fixture on a machine with no kernel cache: how long the
#    first forward+backward takes (kernel compilation), then a warm one;
# 2. the benchmark on a random checkpoint of Qwen2-1.5B's shape over the first $SAMPLES aqua
#    Detailed-CoT samples, padded to multiples of $PAD tokens (at most 1024/$PAD shapes to
#    compile): forward+backward alone, factored spectra (split), the gram spectra (`--spectra
#    gram`: the factors' QRs by CholeskyQR on the GPU, only T x T matrices to the host; split and
#    pipelined), end to end (auto), and the paper's PyTorch pipeline on the GPU (first
#    $REF_SAMPLES samples) when torch imports;
# 3. parity of every fixture against the float64 reference (`gradlens check --backend cuda`,
#    dense, factored and gram spectra; f32: burn-cuda's matrix products run on TF32 tensor cores,
#    about 1e-3);
# 4. the benchmark on Llama-3.1-8B's shape (no PyTorch row: the paper's pipeline takes minutes a
#    sample there).
# STEPS picks and orders them (default "tiny bench parity bench8b"); each step has its
# own timeout (seconds: T_TINY, T_BENCH, T_PARITY, T_BENCH8B); logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${GRADLENS:-.gpu/gradlens}
OUT=${OUT:-target/gpu-short}
AQUA=${AQUA:-.gpu/aqua.json}
SAMPLES=${SAMPLES:-8}
REF_SAMPLES=${REF_SAMPLES:-2}
PAD=${PAD:-256}
mkdir -p "$OUT"
export RUST_LOG=${RUST_LOG:-gradlens=debug} NO_COLOR=1
step() { echo; echo "=== $* ($(date +%T))"; }

step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "CPU cores: $(nproc)"; $BIN --version

tiny() {
step "tiny Qwen2 fixture, cold kernel cache"
t0=$(date +%s)
timeout "${T_TINY:-100}" $BIN grads --backend cuda --model fixtures/qwen2-tiny \
    --data fixtures/data/tiny.json --max-length 96 --out "$OUT/tiny.jsonl" --quiet \
    >"$OUT/tiny.log" 2>&1
echo "exit $? in $(( $(date +%s) - t0 )) s"
grep "forward and backward done" "$OUT/tiny.log" | sed "s/.*done in/fwd+bwd/" | head -n 12
$BIN compare --expected fixtures/qwen2-tiny/expected/grads.jsonl --actual "$OUT/tiny.jsonl" \
    --rtol 1e-4 2>&1 | tail -n 4
}

bench() { # tag config samples ref-samples rows timeout
step "bench $1: $2, $3 aqua Detailed-CoT samples, pad to $PAD"
t0=$(date +%s)
timeout "$6" $BIN bench --backend cuda --model "$2" --data "$AQUA" --samples "$3" \
    --reference-samples "$4" --warmup 1 --pad-to "$PAD" --rows "$5" --threads 0 \
    --json "$OUT/bench-$1.json" >"$OUT/bench-$1.txt" 2>"$OUT/bench-$1.log"
echo "exit $? in $(( $(date +%s) - t0 )) s"
grep -v "skipped:" "$OUT/bench-$1.log" | grep -v "DEBUG" | tail -n 12
grep -E "forward and backward done|copied to the host" "$OUT/bench-$1.log" \
    | sed -e "s/.*done in/fwd+bwd/" -e "s/.*copied to the host in/  on the host/" | head -n 12
cat "$OUT/bench-$1.txt"
}

parity() { # dtype timeout
step "parity of --backend cuda ($1) against the float64 fixtures, rtol 1e-4"
t0=$(date +%s)
timeout "$2" $BIN check --backend cuda --dtype "$1" --paper-data /nonexistent \
    >"$OUT/parity-$1.txt" 2>"$OUT/parity-$1.log"
echo "exit $? in $(( $(date +%s) - t0 )) s"
grep -v "skipped:" "$OUT/parity-$1.log" | grep -v DEBUG | grep -v "^  " | tail -n 20
}

for s in ${STEPS:-tiny bench parity bench8b}; do
    case $s in
        tiny) tiny ;;
        bench) bench 1.5b configs/shapes/qwen2-1.5b.json "$SAMPLES" "$REF_SAMPLES" \
            fwd-bwd,factored,gram,auto,gram-e2e,paper "${T_BENCH:-300}" ;;
        parity) parity f32 "${T_PARITY:-120}" ;;
        bench8b) bench 8b configs/shapes/llama-3.1-8b.json 3 0 fwd-bwd,factored,auto \
            "${T_BENCH8B:-300}" ;;
        *) echo "unknown step $s" ;;
    esac
done
