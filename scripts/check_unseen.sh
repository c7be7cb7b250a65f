#!/usr/bin/env bash
# Acceptance check by hand (not CI): fresh random checkpoints the tests never saw, one per supported
# configuration, other seeds and sizes than the fixtures; gradlens (f64 and f32) against the
# transformers float64 reference on the paper's Detailed-CoT samples (> 400 tokens) and answer-only
# samples (1-5 response tokens).
#   pip install torch transformers tokenizers safetensors
#   scripts/check_unseen.sh [OUT_DIR]        (default /tmp/gradlens-unseen)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/gradlens-unseen}
DATA=${GRADLENS_DATA:-../shared/paper-data}
cargo build -q --release -p gradlens-cli
BIN=target/release/gradlens
mk() { python3 scripts/make_fixtures.py --custom "$@" >/dev/null 2>&1; }
mkdir -p "$OUT"
mk qwen2   --seed 11 --hidden 96 --layers 3 --heads 6 --kv-heads 2 --intermediate 160 --tie --vocab 800 --out "$OUT/qwen2"
mk llama   --seed 12 --hidden 80 --layers 3 --heads 5 --kv-heads 5 --intermediate 80 --tokenizer metaspace --vocab 700 --out "$OUT/llama2"
mk llama   --seed 13 --hidden 96 --layers 2 --heads 6 --kv-heads 2 --intermediate 128 --tokenizer byte_level_bos --vocab 650 --rope-theta 500000 --rope-scaling llama3 --out "$OUT/llama31"
mk mistral --seed 14 --hidden 64 --layers 3 --heads 4 --kv-heads 1 --head-dim 20 --intermediate 112 --tokenizer metaspace --vocab 600 --sliding-window 40 --out "$OUT/mistral"
mk gemma   --seed 15 --hidden 48 --layers 3 --heads 3 --kv-heads 1 --head-dim 24 --intermediate 80 --tie --tokenizer metaspace_gemma --vocab 550 --out "$OUT/gemma"
mk gemma2  --seed 16 --hidden 64 --layers 4 --heads 4 --kv-heads 2 --head-dim 24 --intermediate 96 --tie --tokenizer metaspace_gemma --vocab 600 --sliding-window 32 --query-pre-attn-scalar 20 --attn-softcap 3.0 --final-softcap 2.0 --out "$OUT/gemma2"
fail=0
printf '%-8s %-14s %-5s %s\n' model samples dtype result
for m in qwen2 llama2 llama31 mistral gemma gemma2; do
  for spec in "cot_500/aqua_train_with_cot_gpt4o.json:detailed:3" "cot_500/aqua_train_no_cot.json:answer_only:4"; do
    IFS=: read -r file tag n <<<"$spec"
    python3 scripts/make_fixtures.py --existing "$OUT/$m" --data "$DATA/$file" --limit "$n" --tag "$tag" --max-length 1024 >/dev/null 2>&1
    for dt in f64 f32; do
      rtol=1e-9; [ $dt = f32 ] && rtol=1e-4
      rm -f "$OUT/$m/$tag-$dt.jsonl" "$OUT/$m/$tag-$dt.skipped.jsonl"
      $BIN grads --quiet --model "$OUT/$m" --data "$DATA/$file" --limit "$n" --dtype $dt --out "$OUT/$m/$tag-$dt.jsonl" 2>/dev/null
      if r=$($BIN compare --expected "$OUT/$m/expected/grads_$tag.jsonl" --actual "$OUT/$m/$tag-$dt.jsonl" --rtol $rtol 2>&1); then
        res="ok: $(echo "$r" | tail -1)"
      else
        res="FAIL: $(echo "$r" | tail -3 | tr '\n' ' ')"; fail=1
      fi
      printf '%-8s %-14s %-5s %s\n' "$m" "$tag($n)" $dt "$res"
    done
  done
done
exit $fail
