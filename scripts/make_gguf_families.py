#!/usr/bin/env python3
"""Tiny GGUF files of every family gradlens imports from GGUF, and transformers' own reading of
them (run by hand): for Llama, Mistral (llama.cpp writes it as `llama`; its `general.name` says
Mistral: gradlens imports it as `mistral`, while transformers 5.25 reads it as Llama — it takes a
file for Mistral only when the name is exactly "mistral", and then cannot load it, its gguf-py
having no `mistral` architecture; the two agree below the 4096-token window), Qwen2,
Qwen3, Gemma 2 and Gemma 3, a two-layer model with random f32 weights under llama.cpp's tensor
names and metadata keys, written with the `gguf` package's writer, with a byte-level BPE
vocabulary (fixtures/qwen2-tiny's) and its chat template. transformers loads each file
(`gguf_file=`: its GGUF tokenizer, its reverse q/k permutation, Gemma's norms minus one) and gives
the token ids of fixtures/data/tiny.json (base text and chat template) and the float64 statistics
of the paper's method (scripts/make_fixtures.py), base mode, max_length 96. gradlens' import must
give the same (tests/gguf.rs).

    python scripts/make_gguf_families.py      # writes fixtures/gguf-families/<family>/
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFWriter, TokenType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

MAX_LENGTH = 96
HIDDEN, FFN, LAYERS = 64, 96, 2

# family: (architecture, general.name, heads, kv heads, head_dim, untied head, extra)
FAMILIES = {
    "llama": ("llama", "tiny-llama", 4, 2, None, True, {}),
    "mistral": ("llama", "Mistral-tiny", 4, 2, None, True, {}),
    "qwen2": ("qwen2", "tiny-qwen2", 4, 2, None, True, {"bias": True}),
    "qwen3": ("qwen3", "tiny-qwen3", 2, 1, 128, False, {"qk_norm": True}),
    "gemma2": ("gemma2", "tiny-gemma2", 2, 1, 256, False, {"gemma": True}),
    "gemma3": ("gemma3", "tiny-gemma3", 2, 1, 256, False, {"gemma": True, "qk_norm": True}),
}


def vocabulary():
    t = json.loads((mf.FIXTURES / "qwen2-tiny/tokenizer.json").read_text())
    cfg = json.loads((mf.FIXTURES / "qwen2-tiny/tokenizer_config.json").read_text())
    vocab = dict(t["model"]["vocab"])
    for a in t["added_tokens"]:
        vocab[a["content"]] = a["id"]
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    special = {a["id"] for a in t["added_tokens"] if a.get("special")}
    types = [TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
    return tokens, types, merges, cfg["chat_template"]


def write_gguf(family: str, path: Path, seed: int) -> None:
    arch, name, heads, kv, head_dim, untied, extra = FAMILIES[family]
    d = head_dim or HIDDEN // heads
    tokens, types, merges, template = vocabulary()
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if head_dim is not None:
        w.add_key_length(d)
        w.add_value_length(d)
    else:
        w.add_rope_dimension_count(d)
    if extra.get("gemma"):
        w.add_sliding_window(16)
        if arch == "gemma2":
            # transformers does not read these keys: its defaults (50, 30) are written.
            w.add_attn_logit_softcapping(50.0)
            w.add_final_logit_softcapping(30.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index("<|endoftext|>"))
    w.add_chat_template(template)

    def t(name, *shape, norm=False):
        if norm:
            base = 1.0 if extra.get("gemma") else 1.0
            a = base + 0.1 * rng.standard_normal(shape)
        else:
            a = 0.1 * rng.standard_normal(shape)
        w.add_tensor(name, a.astype(np.float32))

    t("token_embd.weight", len(tokens), HIDDEN)
    t("output_norm.weight", HIDDEN, norm=True)
    if untied:
        t("output.weight", len(tokens), HIDDEN)
    for i in range(LAYERS):
        b = f"blk.{i}."
        t(b + "attn_norm.weight", HIDDEN, norm=True)
        t(b + "attn_q.weight", heads * d, HIDDEN)
        t(b + "attn_k.weight", kv * d, HIDDEN)
        t(b + "attn_v.weight", kv * d, HIDDEN)
        t(b + "attn_output.weight", HIDDEN, heads * d)
        if extra.get("bias"):
            t(b + "attn_q.bias", heads * d)
            t(b + "attn_k.bias", kv * d)
            t(b + "attn_v.bias", kv * d)
        if extra.get("qk_norm"):
            t(b + "attn_q_norm.weight", d, norm=True)
            t(b + "attn_k_norm.weight", d, norm=True)
        t(b + "ffn_norm.weight", HIDDEN, norm=True)
        if extra.get("gemma"):
            t(b + "post_attention_norm.weight", HIDDEN, norm=True)
            t(b + "post_ffw_norm.weight", HIDDEN, norm=True)
        t(b + "ffn_gate.weight", FFN, HIDDEN)
        t(b + "ffn_up.weight", FFN, HIDDEN)
        t(b + "ffn_down.weight", HIDDEN, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    records = json.loads((mf.FIXTURES / "data/tiny.json").read_text())
    only = sys.argv[1:] or list(FAMILIES)
    for seed, family in enumerate(FAMILIES):
        if family not in only:
            continue
        out = mf.FIXTURES / "gguf-families" / family
        out.mkdir(parents=True, exist_ok=True)
        path = out / "model.gguf"
        write_gguf(family, path, seed)
        tok = AutoTokenizer.from_pretrained(out, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32)
        model.eval()
        ids = []
        for r in records:
            instr = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
            ids.append({"base": tok.encode(instr + "\n" + r["output"]),
                        "instruct": tok.encode(mf.training_text(tok, instr, r["output"], True))})
        (out / "token_ids.json").write_text(json.dumps(ids) + "\n")
        model64 = mf.to_float64_reference(model)
        lines, skipped, _ = mf.measure(model64, tok, records, MAX_LENGTH, instruct=False)
        with open(out / "grads.jsonl", "w") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        (out / "transformers_config.json").write_text(
            json.dumps(model.config.to_dict(), indent=1, sort_keys=True, default=str) + "\n")
        print(family, type(model).__name__, len(lines), "measured,", len(skipped), "skipped")


if __name__ == "__main__":
    main()
