#!/bin/bash
# Every kind of output gradlens writes, from the fixtures: grads JSONL of every checkpoint (with
# spectra), an instruct f32 run, a train run with --per-sample, a LoRA run, three reports with
# their figures, compare. Run it with the binary before and after a refactoring into the same
# folder and diff -r the two copies: they must be byte-identical.
#   scripts/output_snapshot.sh target/debug/gradlens /tmp/out && cp -a /tmp/out /tmp/before …
set -e
G=$1; O=$2; F=$(cd "$(dirname "$0")/.." && pwd)/fixtures; D=$F/data/tiny.json
rm -rf $O; mkdir -p $O
for m in qwen2-tiny llama2-tiny llama31-tiny mistral-tiny gemma-tiny gemma2-tiny gemma3-tiny olmo2-tiny qwen3-tiny qwen2-tiny-bf16-sharded; do
  $G grads --quiet --model $F/$m --data $D --out $O/grads/$m.jsonl --dtype f64 --max-length 96 --save-spectrum >/dev/null
done
$G grads --quiet --model $F/qwen2-tiny --data $D --out $O/grads-f32/q.jsonl --max-length 64 --instruct >/dev/null
$G train --quiet --model $F/qwen2-tiny --data $D --out $O/train --dtype f64 --batch-size 2 --steps 6 --lr 1e-3 --shuffle --seed 3 --save-every 3 --max-length 96 --per-sample >/dev/null 2>&1
$G train --quiet --model $F/llama2-tiny --data $D --out $O/lora --dtype f64 --batch-size 2 --steps 4 --lr 1e-3 --max-length 96 --lora 4 >/dev/null 2>&1
$G report --in $O/grads --out $O/report >/dev/null 2>&1
$G report --in $O/train --out $O/report-train >/dev/null 2>&1
$G report --in $F/report/paper28.jsonl --out $O/report-paper >/dev/null 2>&1
$G compare --actual $O/grads/qwen2-tiny.jsonl --expected $F/qwen2-tiny/expected/grads.jsonl > $O/compare.txt 2>&1 || true
echo done
