#!/usr/bin/env python3
"""Make gradlens' reference fixtures with Hugging Face transformers (run by hand, never by CI).

For each fixture: a tiny random-initialised checkpoint as Hugging Face ships one (config.json,
safetensors, tokenizer.json trained here with the `tokenizers` library, tokenizer_config.json),
and the expected outputs of the paper's measurement computed by transformers in float64:

    expected/logits.json     logits at a few positions of the first sample, and every sample's loss
    expected/grads.jsonl     the measurement's JSONL (gradlens' format, the paper's keys)
    expected/skipped.jsonl   samples that are not measurements, with the reason

transformers computes RMSNorm, the rotary tables, the attention softmax and the loss in float32 even
for a float64 model; the reference below upcasts each of them (patched per family), so the expected
values are float64 throughout.

    pip install torch transformers tokenizers safetensors
    python scripts/make_fixtures.py                      # all committed fixtures (fixtures/)
    python scripts/make_fixtures.py --only qwen2-tiny    # one of them
    # an ad-hoc checkpoint and reference on any data file (e.g. the paper's):
    python scripts/make_fixtures.py --custom qwen2 --seed 7 --hidden 96 --layers 3 --heads 6 \
        --kv-heads 2 --intermediate 160 --tie --data ../shared/paper-data/cot_500/aqua_train_with_cot_gpt4o.json \
        --limit 4 --max-length 1024 --out /tmp/qwen2-unseen
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers, Regex

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma 3's template (as Google ships it, text only): a system turn is folded into the first user turn.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


# ----------------------------------------------------------------------------------------------
# Data the project writes itself (committed as fixtures/data/tiny.json)
# ----------------------------------------------------------------------------------------------

def tiny_records() -> list[dict]:
    """Deterministic records covering the cases the tests need."""
    rng = random.Random(1234)
    recs = []
    names = ["Ada", "Bo", "Chen", "Dana", "Élodie", "Femi"]
    for i in range(3):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        who = names[i]
        recs.append({
            "instruction": f"{who} has {a} apples and buys {b} more. How many apples does {who} have now?",
            "input": "" if i != 1 else "Answer with a number.",
            "output": (f"{who} starts with {a} apples.\nBuying {b} more gives {a} + {b} = {a + b}.\n"
                       f"The answer is {a + b}."),
        })
    # Literal backslash-n sequences as in the paper's files, and non-ASCII text.
    recs.append({"instruction": "Translate to French: good morning\\nThen stop.", "input": "",
                 "output": "Bonjour — «bonne journée» ✓"})
    # A one-token-ish answer.
    recs.append({"instruction": "Is 7 prime? Answer yes or no.", "input": "", "output": "yes"})
    # A long response, truncated by max_length.
    steps = " ".join(f"Step {k}: add {k} to the total, giving {k * (k + 1) // 2}." for k in range(1, 40))
    recs.append({"instruction": "Sum the numbers from 1 to 39 step by step.", "input": "", "output": steps})
    # A prompt longer than max_length: no response token is left (skipped).
    recs.append({"instruction": "Repeat: " + " ".join(["the quick brown fox jumps over the lazy dog"] * 30),
                 "input": "", "output": "done"})
    # An empty response (skipped).
    recs.append({"instruction": "Say nothing.", "input": "", "output": ""})
    return recs


def corpus() -> list[str]:
    """Training text for the tiny tokenizers: the project's own generated sentences."""
    rng = random.Random(99)
    words = ("the a an of to and in is was for on that with as it by at from this be are or his her "
             "which one all would there their what so up out if about who get go me when make can like "
             "time no just him know take people into year your good some could them see other than then "
             "now look only come its over think also back after use two how our work first well way even "
             "new want because any these give day most us answer number step total sum add apples buys "
             "more how many have has starts gives question option correct therefore because prime yes "
             "translate french morning bonjour stop repeat quick brown fox jumps lazy dog").split()
    lines = []
    for _ in range(4000):
        n = rng.randint(4, 16)
        s = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.5:
            s += f" {rng.randint(0, 999)} + {rng.randint(0, 99)} = {rng.randint(0, 1200)}."
        lines.append(s.capitalize() + rng.choice([".", "?", "!", ":", "\n"]))
    return lines


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------

def make_tokenizer(kind: str, vocab: int) -> tuple[Tokenizer, dict]:
    """`byte_level` (Qwen2/Llama 3 style, no BOS or with BOS) or `metaspace` (Llama 2/Gemma style, BOS)."""
    if kind in ("byte_level", "byte_level_bos"):
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        if kind == "byte_level_bos":
            special = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus(), trainer)
        if kind == "byte_level_bos":
            bos = "<|begin_of_text|>"
            tok.post_processor = processors.Sequence([
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                              special_tokens=[(bos, tok.token_to_id(bos))]),
            ])
            extra = {"bos_token": bos, "eos_token": "<|end_of_text|>"}
        else:
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
            extra = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        return tok, extra
    if kind in ("metaspace", "metaspace_gemma"):
        # SentencePiece-style BPE with byte fallback: Llama 2 prepends "▁", Gemma does not.
        special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        if kind == "metaspace":
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        else:
            tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special + byte_tokens, show_progress=False)
        tok.train_from_iterator(corpus(), trainer)
        bos = "<bos>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))])
        return tok, {"bos_token": bos, "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    raise ValueError(kind)


# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------

def family_config(family: str, a: argparse.Namespace, vocab: int):
    from transformers import AutoConfig
    common = dict(
        vocab_size=vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=a.tie, rms_norm_eps=1e-5,
        initializer_range=a.init_std,
    )
    rope = {"rope_type": "default", "rope_theta": a.rope_theta}
    if a.rope_scaling == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": a.rope_theta, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    elif a.rope_scaling == "linear":
        rope = {"rope_type": "linear", "rope_theta": a.rope_theta, "factor": 2.0}
    elif a.rope_scaling == "yarn":
        # Qwen3's long-context setting in miniature: the ramp and the attention factor bite within
        # the samples' 1024 positions.
        rope = {"rope_type": "yarn", "rope_theta": a.rope_theta, "factor": 4.0,
                "original_max_position_embeddings": 64}
    if a.head_dim:
        common["head_dim"] = a.head_dim
    if family in ("qwen2", "llama"):
        cfg = AutoConfig.for_model(family, rope_parameters=rope, **common)
    elif family == "mistral":
        cfg = AutoConfig.for_model("mistral", rope_parameters=rope, sliding_window=a.sliding_window, **common)
    elif family == "gemma":
        cfg = AutoConfig.for_model("gemma", rope_parameters=rope, hidden_act="gelu_pytorch_tanh", **common)
    elif family == "gemma2":
        cfg = AutoConfig.for_model("gemma2", rope_parameters=rope, hidden_activation="gelu_pytorch_tanh",
                                   sliding_window=a.sliding_window, query_pre_attn_scalar=a.query_pre_attn_scalar,
                                   attn_logit_softcapping=a.attn_softcap, final_logit_softcapping=a.final_softcap,
                                   **common)
    elif family == "qwen3":
        # A sliding window from layer 1 on (layer_types), when asked for.
        extra = dict(use_sliding_window=True, sliding_window=a.sliding_window, max_window_layers=1) \
            if a.sliding_window else {}
        cfg = AutoConfig.for_model("qwen3", rope_parameters=rope, **extra, **common)
    elif family == "gemma3":
        # Local layers: their own base, unscaled; global layers: rope_theta, linearly scaled.
        full = {"rope_type": "linear", "rope_theta": a.rope_theta, "factor": 2.0}
        local = {"rope_type": "default", "rope_theta": 1000.0}
        types = ["sliding_attention", "full_attention"] * a.layers
        cfg = AutoConfig.for_model("gemma3_text", rope_parameters={"full_attention": full, "sliding_attention": local},
                                   hidden_activation="gelu_pytorch_tanh", sliding_window=a.sliding_window,
                                   query_pre_attn_scalar=a.query_pre_attn_scalar, layer_types=types[: a.layers],
                                   **common)
    elif family == "olmo2":
        common.pop("head_dim", None)  # OLMo 2 has none: hidden / heads
        cfg = AutoConfig.for_model("olmo2", rope_parameters=rope, **common)
    else:
        raise ValueError(f"unknown family {family}")
    return cfg


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial norms and biases (not ones and zeros) so a port that ignores them fails."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                base = 0.0 if "gemma" in type(model).__name__.lower() else 1.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------------------
# float64 reference: upcast what transformers computes in float32
# ----------------------------------------------------------------------------------------------

_orig_softmax = F.softmax


def _softmax64(input, dim=None, _stacklevel=3, dtype=None):
    if dtype == torch.float32 and input.dtype == torch.float64:
        dtype = torch.float64
    return _orig_softmax(input, dim=dim, dtype=dtype)


def inv_freq64(config, rp=None) -> torch.Tensor:
    """The rotary inverse frequencies in float64 (formulas of transformers' rope init functions);
    `rp`: one layer type's parameters (Gemma 3), else the config's."""
    if rp is None:
        rp = getattr(config, "rope_parameters", None) or {}
    theta = rp.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    kind = rp.get("rope_type", "default")
    if kind == "linear":
        inv = inv / rp["factor"]
    elif kind == "llama3":
        factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        scaled = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        mid = ~(wl < hi_wl) & ~(wl > lo_wl)
        inv = torch.where(mid, smoothed, scaled)
    elif kind == "yarn":
        factor = rp["factor"]
        old = rp.get("original_max_position_embeddings") or config.max_position_embeddings
        beta_fast, beta_slow = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1

        def correction(rotations):
            return head_dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        low, high = correction(beta_fast), correction(beta_slow)
        if rp.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        extrapolation = 1 - ramp
        inv = inv / factor * (1 - extrapolation) + inv * extrapolation
    elif kind != "default":
        raise ValueError(kind)
    return inv


def to_float64_reference(model: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(model).to(torch.float64)
    cfg = m.config
    per_type = isinstance(getattr(cfg, "rope_parameters", None), dict) and "full_attention" in cfg.rope_parameters
    inv = None if per_type else inv_freq64(cfg)
    for mod in m.modules():
        cls = type(mod).__name__
        if cls.endswith("RotaryEmbedding") and per_type:
            # One table per layer type (Gemma 3): forward(x, position_ids, layer_type).
            invs = {}
            for lt in mod.layer_types:
                ours = inv_freq64(cfg, cfg.rope_parameters[lt])
                theirs = getattr(mod, f"{lt}_original_inv_freq").to(torch.float32)
                assert torch.allclose(ours.to(torch.float32), theirs, rtol=1e-6, atol=0), (lt, ours, theirs)
                invs[lt] = ours

            def rot_forward_typed(x, position_ids, layer_type, _invs=invs):
                freqs = position_ids[..., None].to(torch.float64) * _invs[layer_type]
                emb = torch.cat((freqs, freqs), dim=-1)
                return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
            mod.forward = rot_forward_typed
        elif cls.endswith("RotaryEmbedding"):
            # transformers' own (float32) frequencies must agree with ours to float32 precision
            ours = inv.to(torch.float32)
            theirs = mod.original_inv_freq.to(torch.float32)
            assert torch.allclose(ours, theirs, rtol=1e-6, atol=0), (ours, theirs)
            mod.inv_freq = inv.clone()

            # YaRN's factor on cos and sin (1 otherwise), a Python float computed in float64.
            scale = float(getattr(mod, "attention_scaling", 1.0))

            def rot_forward(x, position_ids, _inv=inv, _scale=scale):
                freqs = position_ids[..., None].to(torch.float64) * _inv
                emb = torch.cat((freqs, freqs), dim=-1)
                return (emb.cos() * _scale).to(x.dtype), (emb.sin() * _scale).to(x.dtype)
            mod.forward = rot_forward
        elif cls.endswith("RMSNorm"):
            gemma = "Gemma" in cls

            def norm_forward(x, _mod=mod, _gemma=gemma):
                eps = getattr(_mod, "eps", None) or getattr(_mod, "variance_epsilon")
                y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return y * (1.0 + _mod.weight) if _gemma else _mod.weight * y
            mod.forward = norm_forward
        elif cls.endswith("ScaledWordEmbedding"):
            mod.embed_scale = torch.tensor(cfg.hidden_size ** 0.5, dtype=torch.float64)
    return m


# ----------------------------------------------------------------------------------------------
# The measurement (the paper's method), float64
# ----------------------------------------------------------------------------------------------

def paper_selected(name: str, p: torch.Tensor) -> bool:
    return p.ndim == 2 and (p.shape[0] == p.shape[1] or "self_attn" in name)


def training_text(hf_tok, instr: str, out: str, instruct: bool) -> str:
    """The text a record is trained on, as gradlens forms it: `instr + "\\n" + out`, or (instruct)
    the chat template with the system turn unless the template raises on one (as gradlens'
    ChatTemplate::takes_system_turn decides: Gemma and Gemma 2's reject a system role, Gemma 3's
    folds it into the first user turn), the generation prompt, then the output."""
    if not instruct:
        return instr + "\n" + out
    msgs = [{"role": "user", "content": instr}]
    try:
        text = hf_tok.apply_chat_template(
            [{"role": "system", "content": "You are a helpful assistant."}] + msgs,
            tokenize=False, add_generation_prompt=True)
    except Exception:
        text = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return text + out


def measure(model64, hf_tok, records, max_length, instruct=False, logits_at=None):
    lines, skipped, logits_out = [], [], {}
    for p in model64.parameters():
        p.requires_grad_(False)
    selected = [(n, p) for n, p in model64.named_parameters() if paper_selected(n, p)]
    for _, p in selected:
        p.requires_grad_(True)
    for index, rec in enumerate(records):
        instr = rec["instruction"]
        if rec.get("input"):
            instr = instr + "\n" + rec["input"]
        out = rec["output"]
        text = training_text(hf_tok, instr, out, instruct)
        if out == "":
            skipped.append({"index": index, "reason": "empty response"})
            continue
        ids = hf_tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
        start = len(hf_tok.encode(text[: text.rfind(out)]))
        T = ids.shape[1]
        if T - max(start, 1) <= 0:
            skipped.append({"index": index, "reason": "no response token within max_length"})
            continue
        model64.zero_grad(set_to_none=True)
        torch.nn.functional.softmax = _softmax64
        try:
            logits = model64(input_ids=ids).logits[0]
        finally:
            torch.nn.functional.softmax = _orig_softmax
        assert logits.dtype == torch.float64
        lp = torch.log_softmax(logits[:-1], dim=-1)
        tgt = ids[0, 1:]
        keep = torch.arange(1, T) >= start
        loss = -(lp[torch.arange(T - 1), tgt][keep]).mean()
        loss.backward()
        if logits_at is not None and not logits_out:
            pos = sorted({0, 1, T // 2, T - 2, T - 1})
            logits_out = {"index": index, "ids": ids[0].tolist(), "positions": pos,
                          "logits": [logits[t].detach().tolist() for t in pos]}
        line = {"index": index, "instruction": instr, "output": out, "loss": loss.item(),
                "n_tokens": T, "n_loss_tokens": T - max(start, 1)}
        for name, p in selected:
            g = p.grad
            s = torch.linalg.svdvals(g)
            p_ = s / s.sum()
            p_ = p_[p_ > 0]
            line[name] = {"M_mean": g.mean().item(), "M_max": g.max().item(), "M_min": g.min().item(),
                          "frobenius_norm": torch.linalg.norm(g).item(),
                          "S_sum": s.sum().item(), "S_max": s.max().item(), "S_min": s.min().item(),
                          "effective_rank": torch.exp(-(p_ * torch.log(p_)).sum()).item(),
                          "stable_rank": ((s ** 2).sum() / s.max() ** 2).item()}
        lines.append(line)
    return lines, skipped, logits_out


# ----------------------------------------------------------------------------------------------
# Writing a fixture
# ----------------------------------------------------------------------------------------------

def write_checkpoint(family, a, out: Path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(a.seed)
    tok, special = make_tokenizer(a.tokenizer, a.vocab)
    vocab = tok.get_vocab_size()
    cfg = family_config(family, a, vocab)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    perturb(model, a.seed)
    model.eval()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.save_dtype]
    to_save = copy.deepcopy(model).to(save_dtype)
    kw = {"max_shard_size": a.shard_size} if a.shard_size else {}
    to_save.save_pretrained(out, safe_serialization=True, **kw)
    if a.classic_config:
        # The key layout of checkpoints written before transformers 5 (rope_theta / rope_scaling).
        cfg_path = out / "config.json"
        c = json.loads(cfg_path.read_text())
        rp = c.pop("rope_parameters", None) or {}
        c["rope_theta"] = rp.get("rope_theta", 10000.0)
        if rp.get("rope_type", "default") != "default":
            c["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        c.pop("layer_types", None)
        cfg_path.write_text(json.dumps(c, indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))
    template = (GEMMA3_CHAT_TEMPLATE if family == "gemma3" else
                GEMMA_CHAT_TEMPLATE if family.startswith("gemma") else QWEN2_CHAT_TEMPLATE)
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096,
            "chat_template": template, "clean_up_tokenization_spaces": False, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")
    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    # The reference uses the checkpoint as saved (rounded to bf16/f16 if so saved), loaded back.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    # transformers must tokenise exactly as the tokenizers library does on tokenizer.json
    probe = "Hello world\n  12 + 7 = 19. Bonjour — «ça va» ✓"
    assert hf_tok.encode(probe) == tok.encode(probe).ids, "transformers and tokenizers disagree"
    return model, hf_tok


def write_expected(model, hf_tok, records, out: Path, max_length: int, instruct: bool, keep_text: bool):
    model64 = to_float64_reference(model)
    lines, skipped, logits = measure(model64, hf_tok, records, max_length, instruct=instruct, logits_at=True)
    exp = out / "expected"
    exp.mkdir(parents=True, exist_ok=True)
    suffix = "_instruct" if instruct else ""
    with open(exp / f"grads{suffix}.jsonl", "w") as f:
        for line in lines:
            if not keep_text:
                line = {k: v for k, v in line.items() if k not in ("instruction", "output")}
            f.write(json.dumps(line) + "\n")
    with open(exp / f"skipped{suffix}.jsonl", "w") as f:
        for s in skipped:
            f.write(json.dumps(s) + "\n")
    if not instruct:
        logits["max_length"] = max_length
        logits["losses"] = {str(l["index"]): l["loss"] for l in lines}
        (exp / "logits.json").write_text(json.dumps(logits) + "\n")
    print(f"{out}: {len(lines)} measured, {len(skipped)} skipped{' (instruct)' if instruct else ''}")


# The committed fixtures: name -> (family, settings). Tests read fixtures/<name>/.
FIXTURE_SPECS = {
    # Qwen2: GQA 4/2, untied, f32 single file, transformers-5 config keys.
    "qwen2-tiny": dict(family="qwen2", seed=0, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96,
                       tie=False, tokenizer="byte_level", vocab=600, instruct=True),
    # Qwen2: MQA, tied, bf16 weights in shards, the older config keys (rope_theta).
    "qwen2-tiny-bf16-sharded": dict(family="qwen2", seed=1, hidden=48, layers=3, heads=4, kv_heads=1,
                                    intermediate=64, tie=True, tokenizer="byte_level", vocab=500,
                                    save_dtype="bf16", shard_size="40KB", classic_config=True),
    # Llama 2: MHA, untied, SentencePiece-style tokenizer with BOS, square MLP (gate/up/down measured).
    "llama2-tiny": dict(family="llama", seed=2, hidden=64, layers=2, heads=4, kv_heads=4, intermediate=64,
                        tokenizer="metaspace", vocab=700, classic_config=True),
    # Llama 3.1: GQA, llama3 rope scaling, byte-level BPE with BOS, f16 weights.
    "llama31-tiny": dict(family="llama", seed=3, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96,
                         tokenizer="byte_level_bos", vocab=600, rope_theta=500000.0, rope_scaling="llama3",
                         save_dtype="f16"),
    # Mistral: sliding window (24) shorter than the samples, head_dim 24 != hidden/heads.
    "mistral-tiny": dict(family="mistral", seed=4, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=24,
                         intermediate=96, tokenizer="metaspace", vocab=600, sliding_window=24),
    # Gemma: MQA, head_dim 32 != hidden/heads, tied, (1+w) norms, scaled embeddings, GeLU-tanh.
    "gemma-tiny": dict(family="gemma", seed=5, hidden=64, layers=2, heads=4, kv_heads=1, head_dim=32,
                       intermediate=96, tie=True, tokenizer="metaspace_gemma", vocab=600, instruct=True),
    # Gemma 2: soft-caps small enough to bite (2.0 on attention logits, 1.5 on final logits), sliding
    # window 16 on layers 0 and 2, sandwich norms, query_pre_attn_scalar 24 != head_dim 16.
    "gemma2-tiny": dict(family="gemma2", seed=6, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16,
                        intermediate=96, tie=True, tokenizer="metaspace_gemma", vocab=600, sliding_window=16,
                        query_pre_attn_scalar=24, attn_softcap=2.0, final_softcap=1.5),
    # Qwen3: q/k RMSNorm per head, no q/k/v bias, head_dim 24 != hidden/heads (q and o not square),
    # a sliding window of 16 on layer 1 (layer_types), YaRN rope scaling (factor 4 over 64 positions).
    "qwen3-tiny": dict(family="qwen3", seed=7, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=24,
                       intermediate=96, tokenizer="byte_level", vocab=600, sliding_window=16, instruct=True,
                       rope_scaling="yarn"),
    # Gemma 3: local (sliding window 16, rotary base 1000) and global layers (rope_theta 10000, linear
    # scaling 2), q/k RMSNorm per head, sandwich norms, query_pre_attn_scalar 24 != head_dim 16.
    "gemma3-tiny": dict(family="gemma3", seed=9, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16,
                        intermediate=96, tie=True, tokenizer="metaspace_gemma", vocab=600, sliding_window=16,
                        query_pre_attn_scalar=24, instruct=True),
    # OLMo 2: post-norm-only layers, q/k RMSNorm over the whole projections (64 and 32 wide).
    "olmo2-tiny": dict(family="olmo2", seed=8, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96,
                       tokenizer="byte_level", vocab=600, instruct=True),
}


PAPER_DATA = Path(os.environ.get("GRADLENS_DATA", ROOT.parent / "shared" / "paper-data"))
# Numbers-only references on the paper's own data, for every fixture: (file, tag, samples).
PAPER_REFS = [
    ("cot_500/aqua_train_with_cot_gpt4o.json", "aqua_detailed", 3),  # Detailed CoT, > 400 tokens
    ("cot_500/aqua_train_no_cot.json", "aqua_none", 4),  # answer only: 1-5 response tokens
]


def write_paper_refs(model, hf_tok, out: Path, max_length: int = 1024) -> None:
    if not PAPER_DATA.is_dir():
        print(f"{PAPER_DATA} not found: no references on the paper's data")
        return
    model64 = to_float64_reference(model)
    for file, tag, n in PAPER_REFS:
        records = json.loads((PAPER_DATA / file).read_text())[:n]
        lines, skipped, _ = measure(model64, hf_tok, records, max_length)
        assert not skipped, skipped
        with open(out / "expected" / f"grads_{tag}.jsonl", "w") as f:
            for line in lines:  # the paper's text is not ours to commit: numbers only
                f.write(json.dumps({k: v for k, v in line.items() if k not in ("instruction", "output")}) + "\n")
        print(f"{out}: {tag}: n_tokens {[l['n_tokens'] for l in lines]}, "
              f"n_loss_tokens {[l['n_loss_tokens'] for l in lines]}")


def write_report_fixture() -> None:
    """A JSONL in the paper's own script format for a 28-layer model (flat keys, no index, one NaN
    loss, one NaN in a single projection), and its curves and MADs computed with numpy exactly as
    the paper's code_vis/exp_utils.py does (NaN rows dropped per projection)."""
    import numpy as np
    rng = np.random.default_rng(28)
    L, N = 28, 6
    rows = []
    for i in range(N):
        row = {"instruction": f"q{i}", "output": f"a{i}", "loss": float(rng.uniform(0.5, 3.0))}
        for l in range(L):
            for p in ["q_proj", "k_proj", "v_proj", "o_proj"]:
                s_max = float(rng.uniform(0.1, 2.0))
                row[f"model.layers.{l}.self_attn.{p}.weight"] = {
                    "M_mean": 0.0, "M_max": 1.0, "M_min": -1.0, "frobenius_norm": float(rng.uniform(1, 5)),
                    "S_sum": s_max + float(rng.uniform(0.5, 10.0)), "S_max": s_max, "S_min": 0.0}
        rows.append(row)
    rows[2]["loss"] = float("nan")  # the paper's script writes NaN losses
    for p in ["q_proj", "k_proj", "v_proj", "o_proj"]:
        for k in ["S_sum", "S_max", "frobenius_norm"]:
            rows[2][f"model.layers.5.self_attn.{p}.weight"][k] = float("nan")
    rows[4]["model.layers.11.self_attn.k_proj.weight"]["S_sum"] = float("nan")  # K only
    out = FIXTURES / "report"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "paper28.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")  # json.dumps writes NaN, as the paper's script does

    def mad(v):
        d = [abs(v[i + 1] - v[i]) for i in range(len(v) - 1)]
        return sum(d) / len(d)

    expected = {}
    for stat in ["S_sum", "S_ratio", "frobenius_norm", "S_sum_over_loss"]:
        expected[stat] = {}
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            m = []
            for r in rows:
                vals = []
                for l in range(L):
                    d = r[f"model.layers.{l}.self_attn.{p}.weight"]
                    if stat == "S_ratio":
                        vals.append(d["S_max"] / d["S_sum"])
                    elif stat == "S_sum_over_loss":
                        vals.append(d["S_sum"] / r["loss"])
                    else:
                        vals.append(d[stat])
                m.append(vals)
            m = np.array(m)
            m = m[~np.isnan(m).any(axis=1)]
            c = m.mean(0).tolist()
            expected[stat][p] = {"curve": c, "n": int(m.shape[0]),
                                 "mad": [mad(c[:7]), mad(c[7:21]), mad(c[21:]), mad(c)]}
    (out / "paper28_expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"{out}: paper28.jsonl and its curves")


def spec_namespace(spec: dict) -> argparse.Namespace:
    d = dict(seed=0, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96, tie=False, tokenizer="byte_level",
             vocab=600, save_dtype="f32", shard_size=None, classic_config=False, rope_theta=10000.0,
             init_std=0.1, max_length=96, instruct=False, rope_scaling="none", head_dim=0, sliding_window=0,
             query_pre_attn_scalar=24, attn_softcap=2.0, final_softcap=1.5)
    d.update(spec)
    return argparse.Namespace(**d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="make only this committed fixture")
    ap.add_argument("--custom", help="family of an ad-hoc checkpoint (with --out)")
    ap.add_argument("--existing", type=Path, help="reference for an existing checkpoint dir (with --data, --tag)")
    ap.add_argument("--tag", help="expected/grads_<tag>.jsonl for --existing")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--data", type=Path, help="data file for the ad-hoc reference (default: the tiny records)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--keep-text", action="store_true", help="keep instruction/output in the expected JSONL")
    for k, v in vars(spec_namespace({})).items():
        if isinstance(v, bool):
            ap.add_argument(f"--{k.replace('_', '-')}", action="store_true", default=v)
        else:
            ap.add_argument(f"--{k.replace('_', '-')}", type=type(v) if v is not None else str, default=v)
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    if a.existing:
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
        records = json.loads(a.data.read_text())[: a.limit]
        hf_tok = PreTrainedTokenizerFast.from_pretrained(str(a.existing))
        model = AutoModelForCausalLM.from_pretrained(a.existing, dtype=torch.float32, attn_implementation="eager")
        lines, skipped, _ = measure(to_float64_reference(model), hf_tok, records, a.max_length)
        exp = a.existing / "expected"
        exp.mkdir(exist_ok=True)
        with open(exp / f"grads_{a.tag}.jsonl", "w") as f:
            for line in lines:
                if not a.keep_text:  # the paper's text is not ours to commit: numbers only
                    line = {k: v for k, v in line.items() if k not in ("instruction", "output")}
                f.write(json.dumps(line) + "\n")
        print(f"{exp}/grads_{a.tag}.jsonl: {len(lines)} measured, {len(skipped)} skipped; max_length {a.max_length};"
              f" n_tokens {[l['n_tokens'] for l in lines]}")
        return

    if a.custom:
        if not a.out:
            sys.exit("--custom needs --out")
        records = json.loads(a.data.read_text()) if a.data else tiny_records()
        if a.limit:
            records = records[: a.limit]
        model, hf_tok = write_checkpoint(a.custom, a, a.out)
        write_expected(model, hf_tok, records, a.out, a.max_length, False, a.keep_text or a.data is None)
        if a.instruct:
            write_expected(model, hf_tok, records, a.out, a.max_length, True, a.keep_text or a.data is None)
        return

    data_dir = FIXTURES / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_report_fixture()
    records = tiny_records()
    (data_dir / "tiny.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    for name, spec in FIXTURE_SPECS.items():
        if a.only and name != a.only:
            continue
        s = spec_namespace(spec)
        model, hf_tok = write_checkpoint(s.family, s, FIXTURES / name)
        write_expected(model, hf_tok, records, FIXTURES / name, s.max_length, False, True)
        if s.instruct:
            write_expected(model, hf_tok, records, FIXTURES / name, s.max_length, True, True)
        write_paper_refs(model, hf_tok, FIXTURES / name)


if __name__ == "__main__":
    main()
