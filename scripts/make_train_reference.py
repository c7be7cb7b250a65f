#!/usr/bin/env python3
"""The float64 reference of `gradlens train` (run by hand, never by CI): torch.optim.AdamW and
transformers' learning-rate schedules on a committed fixture checkpoint, with the same float64
replacements as scripts/make_fixtures.py (RMSNorm, rotary tables, softmax upcast to float64).

Semantics (as docs/training.md states them for gradlens):
- step k takes the next `batch` usable samples of fixtures/data/tiny.json in data order (or the
  per-epoch SplitMix64 Fisher-Yates permutation with --shuffle), wrapping at the end;
- batch loss = token-weighted mean: grad = sum_i (n_i / N) grad(loss_i), loss_i the sample's mean;
- grad_norm and clipping by torch.nn.utils.clip_grad_norm_;
- lr of step k = lr * lambda(k - 1), transformers' get_*_schedule_with_warmup stepped after each
  optimizer step;
- torch.optim.AdamW (foreach=False), weight decay on parameters with 2 or more dimensions.

Writes fixtures/train/<case>/: args.json (the gradlens options), steps.jsonl, per_sample.jsonl and
final.safetensors (every parameter, float64, under the checkpoint's names).

    /opt/fx/bin/python scripts/make_train_reference.py          # every case
    /opt/fx/bin/python scripts/make_train_reference.py --only qwen2-all
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

ROOT = mf.ROOT
DATA = ROOT / "fixtures" / "data" / "tiny.json"

# name -> the options of both sides. Each case: batch >= 2, warmup >= 1, clipping active, 4+ steps.
CASES = {
    # Untied Qwen2, every parameter trained (biases and norms without weight decay), linear schedule.
    "qwen2-all": dict(fixture="qwen2-tiny", train="all", batch_size=2, steps=5, warmup_steps=1,
                      schedule="linear", lr=3e-3, weight_decay=0.1, max_grad_norm=0.5, max_length=64,
                      shuffle=None),
    # Tied Gemma (the embedding is also the head and gets both gradients), every parameter, cosine,
    # shuffled epochs (6 usable samples, batch 4: batches reach across epochs).
    "gemma-all": dict(fixture="gemma-tiny", train="all", batch_size=4, steps=4, warmup_steps=2,
                      schedule="cosine", lr=5e-3, weight_decay=0.01, max_grad_norm=0.3, max_length=64,
                      shuffle=3),
    # Qwen3, the paper's selection only, constant schedule.
    "qwen3-attention": dict(fixture="qwen3-tiny", train="attention", batch_size=2, steps=4,
                            warmup_steps=1, schedule="constant", lr=2e-3, weight_decay=0.0,
                            max_grad_norm=0.05, max_length=64, shuffle=None),
}

MASK64 = (1 << 64) - 1


def splitmix_order(usable: list[int], seed: int, epoch: int) -> list[int]:
    """gradlens' per-epoch permutation (crates/gradlens/src/train/order.rs)."""
    order = list(usable)
    state = (seed ^ ((epoch * 0x9E3779B97F4A7C15) & MASK64)) & MASK64

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)
    for i in range(len(order) - 1, 0, -1):
        j = nxt() % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def batch_of(usable, step, batch, seed):
    n = len(usable)
    out = []
    for p in range((step - 1) * batch, step * batch):
        e, j = divmod(p, n)
        order = splitmix_order(usable, seed, e) if seed is not None else usable
        out.append(order[j])
    return out


def stats_of(g: torch.Tensor) -> dict:
    s = torch.linalg.svdvals(g)
    p_ = s / s.sum()
    p_ = p_[p_ > 0]
    return {"M_mean": g.mean().item(), "M_max": g.max().item(), "M_min": g.min().item(),
            "frobenius_norm": torch.linalg.norm(g).item(),
            "S_sum": s.sum().item(), "S_max": s.max().item(), "S_min": s.min().item(),
            "effective_rank": torch.exp(-(p_ * torch.log(p_)).sum()).item(),
            "stable_rank": ((s ** 2).sum() / s.max() ** 2).item()}


def prepare(hf_tok, records, max_length):
    """(index, ids, start) of the usable samples, as make_fixtures.measure prepares them (base)."""
    out = []
    for index, rec in enumerate(records):
        instr = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
        o = rec["output"]
        if o == "":
            continue
        text = instr + "\n" + o
        ids = hf_tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
        start = len(hf_tok.encode(text[: text.rfind(o)]))
        if ids.shape[1] - max(start, 1) <= 0:
            continue
        out.append((index, instr, o, ids, start))
    return out


def sample_loss(model64, ids, start):
    T = ids.shape[1]
    torch.nn.functional.softmax = mf._softmax64
    try:
        logits = model64(input_ids=ids).logits[0]
    finally:
        torch.nn.functional.softmax = mf._orig_softmax
    lp = torch.log_softmax(logits[:-1], dim=-1)
    keep = torch.arange(1, T) >= start
    return -(lp[torch.arange(T - 1), ids[0, 1:]][keep]).mean(), int(keep.sum())


def run_case(name: str, c: dict) -> None:
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)
    from safetensors.torch import save_file

    fixture = ROOT / "fixtures" / c["fixture"]
    model = AutoModelForCausalLM.from_pretrained(fixture, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    model64 = mf.to_float64_reference(model)
    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(fixture))
    records = json.loads(DATA.read_text())
    samples = {s[0]: s for s in prepare(hf_tok, records, c["max_length"])}
    usable = sorted(samples)

    named = list(model64.named_parameters())  # a tied head is the embedding's parameter
    for _, p in named:
        p.requires_grad_(False)
    trained = [(n, p) for n, p in named if c["train"] == "all" or mf.paper_selected(n, p)]
    measured = [(n, p) for n, p in named if mf.paper_selected(n, p)]
    for _, p in trained:
        p.requires_grad_(True)
    decay = [p for _, p in trained if p.ndim >= 2]
    no_decay = [p for _, p in trained if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": c["weight_decay"]}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=c["lr"], betas=(0.9, 0.999), eps=1e-8, foreach=False)
    make = {"constant": lambda o: get_constant_schedule_with_warmup(o, c["warmup_steps"]),
            "linear": lambda o: get_linear_schedule_with_warmup(o, c["warmup_steps"], c["steps"]),
            "cosine": lambda o: get_cosine_schedule_with_warmup(o, c["warmup_steps"], c["steps"])}
    sched = make[c["schedule"]](opt)

    out = ROOT / "fixtures" / "train" / name
    out.mkdir(parents=True, exist_ok=True)
    steps_f = open(out / "steps.jsonl", "w")
    per_f = open(out / "per_sample.jsonl", "w")
    clipped_steps = 0
    for step in range(1, c["steps"] + 1):
        batch = batch_of(usable, step, c["batch_size"], c["shuffle"])
        n_total = 0
        parts = []
        for i in batch:
            index, instr, o, ids, start = samples[i]
            loss, n = sample_loss(model64, ids, start)
            grads = torch.autograd.grad(loss, [p for _, p in trained], allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(trained, grads)]
            parts.append((index, instr, o, ids, loss.item(), n, grads))
            n_total += n
        by_name = {n: k for k, (n, _) in enumerate(trained)}
        acc = [torch.zeros_like(p) for _, p in trained]
        loss_sum = 0.0
        for index, instr, o, ids, loss, n, grads in parts:
            w = n / n_total
            for k, g in enumerate(grads):
                acc[k] += w * g
            loss_sum += loss * n
            line = {"step": step, "index": index, "instruction": instr, "output": o, "loss": loss,
                    "n_tokens": ids.shape[1], "n_loss_tokens": n}
            for mname, _ in measured:
                line[mname] = stats_of(grads[by_name[mname]])
            per_f.write(json.dumps(line) + "\n")
        lr = opt.param_groups[0]["lr"]
        line = {"step": step, "lr": lr, "loss": loss_sum / n_total, "grad_norm": None,
                "n_samples": len(batch), "n_loss_tokens": n_total, "samples": batch}
        for mname, _ in measured:
            line[mname] = stats_of(acc[by_name[mname]])
        for (_, p), g in zip(trained, acc):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in trained], c["max_grad_norm"])
        line["grad_norm"] = norm.item()
        clipped_steps += int(norm.item() > c["max_grad_norm"])
        steps_f.write(json.dumps(line) + "\n")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    steps_f.close()
    per_f.close()
    assert clipped_steps >= 2, f"{name}: clipping must bite (it did on {clipped_steps} steps)"
    save_file({n: p.detach().clone().contiguous() for n, p in named}, str(out / "final.safetensors"))
    args = {k: v for k, v in c.items()}
    (out / "args.json").write_text(json.dumps(args, indent=2) + "\n")
    print(f"{out}: {c['steps']} steps, usable samples {usable}, clipping on {clipped_steps} steps")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append")
    a = ap.parse_args()
    torch.manual_seed(0)
    for name, c in CASES.items():
        if a.only and name not in a.only:
            continue
        run_case(name, c)


if __name__ == "__main__":
    main()
