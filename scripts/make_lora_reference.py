#!/usr/bin/env python3
"""The float64 reference of `gradlens train --lora` (run by hand, never by CI): PEFT's LoRA on a
committed fixture checkpoint, torch.optim.AdamW over the adapters, transformers' schedules, with the
float64 replacements of scripts/make_fixtures.py.

Each case starts from a PEFT adapter this script saves first (`init/`, B not zero, in the dtype the
case names: f32, f64 or bf16) and that gradlens reads with --lora-init. Per step (the semantics of
scripts/make_train_reference.py):
- the batch gradient of every measured base weight (the paper's selection) is the gradient of the
  merged weight W + s·BA: torch's gradient of the base layer's weight, which PEFT uses unmerged;
- the adapters' gradients (lora_A, lora_B), their statistics under `<module>.lora_A.weight`;
- grad_norm and clipping (clip_grad_norm_) over the adapters; AdamW (foreach=False) over the
  adapters, weight decay on all of them (2-D).

Writes fixtures/lora/<case>/: args.json, init/ (the PEFT adapter to start from), steps.jsonl,
per_sample.jsonl, final/ (PEFT's save_pretrained of the trained adapter, float64), and of PEFT's
merged model (merge_and_unload) of the final adapter: merged_grads.jsonl (`grads` on tiny.json, for
`gradlens grads --adapter`) and merged_logits.json (logits at a few positions of the first sample).

    python scripts/make_lora_reference.py              # every case
    python scripts/make_lora_reference.py --only qwen2-lora
    python scripts/make_lora_reference.py --check RUN_DIR   # a gradlens LoRA run's final/ in PEFT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import make_train_reference as tr  # noqa: E402

ROOT = mf.ROOT
DATA = ROOT / "fixtures" / "data" / "tiny.json"

# name -> the options of both sides. Each case: batch >= 2, warmup >= 1 or a schedule, clipping
# active on 2+ steps, 4+ steps, an initial adapter whose B is not zero.
CASES = {
    # Qwen2, r 4 on q/k/v/o, warmup + linear, clipping, per-sample lines; the adapter in f32.
    "qwen2-lora": dict(fixture="qwen2-tiny", r=4, alpha=8.0, targets=["q_proj", "k_proj", "v_proj", "o_proj"],
                       rslora=False, init_dtype="f32", batch_size=2, steps=4, warmup_steps=1,
                       schedule="linear", lr=2e-2, weight_decay=0.1, max_grad_norm=0.05,
                       max_length=64, shuffle=None, instruct=False),
    # Llama 3.1, r 2 on q/v only, rsLoRA, cosine, instruct (chat template); the adapter in f64.
    "llama-lora": dict(fixture="llama31-tiny", r=2, alpha=4.0, targets=["q_proj", "v_proj"],
                       rslora=True, init_dtype="f64", batch_size=2, steps=4, warmup_steps=1,
                       schedule="cosine", lr=3e-2, weight_decay=0.0, max_grad_norm=0.05,
                       max_length=96, shuffle=None, instruct=True),
    # Gemma 2 (tied embeddings, soft-caps), r 4 on q/k/v/o, shuffled, constant; the adapter in bf16.
    "gemma2-lora": dict(fixture="gemma2-tiny", r=4, alpha=16.0, targets=["q_proj", "k_proj", "v_proj", "o_proj"],
                        rslora=False, init_dtype="bf16", batch_size=3, steps=4, warmup_steps=1,
                        schedule="constant", lr=1e-2, weight_decay=0.01, max_grad_norm=0.05,
                        max_length=64, shuffle=5, instruct=False),
}

DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16}


def texts(hf_tok, records, max_length, instruct):
    """(index, instr, output, ids, start) of the usable samples, as gradlens prepares them."""
    out = []
    for index, rec in enumerate(records):
        instr = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
        o = rec["output"]
        if o == "":
            continue
        text = mf.training_text(hf_tok, instr, o, instruct)
        ids = hf_tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
        start = len(hf_tok.encode(text[: text.rfind(o)]))
        if ids.shape[1] - max(start, 1) <= 0:
            continue
        out.append((index, instr, o, ids, start))
    return out


def lora_config(c):
    from peft import LoraConfig
    return LoraConfig(r=c["r"], lora_alpha=c["alpha"], target_modules=c["targets"], lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM", use_rslora=c["rslora"])


def save_init(c, base, out: Path) -> None:
    """A PEFT adapter with random A and B (B not zero), saved in the case's dtype."""
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    pm = get_peft_model(base, lora_config(c))
    g = torch.Generator().manual_seed(1234)
    for n, p in pm.named_parameters():
        if "lora_" in n:
            with torch.no_grad():
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    out.mkdir(parents=True, exist_ok=True)
    pm.peft_config["default"].save_pretrained(str(out))
    state = get_peft_model_state_dict(pm)
    save_file({k: v.detach().to(DTYPES[c["init_dtype"]]).contiguous() for k, v in state.items()},
              str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    # The base is not trained: undo the wrapping for the next use.
    pm.unload()


def run_case(name: str, c: dict) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    fixture = ROOT / "fixtures" / c["fixture"]
    out = ROOT / "fixtures" / "lora" / name
    load = lambda: AutoModelForCausalLM.from_pretrained(fixture, dtype=torch.float32,  # noqa: E731
                                                        attn_implementation="eager")
    save_init(c, load(), out / "init")

    model64 = mf.to_float64_reference(load().eval())
    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(fixture))
    records = json.loads(DATA.read_text())
    samples = {s[0]: s for s in texts(hf_tok, records, c["max_length"], c["instruct"])}
    usable = sorted(samples)

    named = list(model64.named_parameters())
    measured = [(n, p) for n, p in named if mf.paper_selected(n, p)]
    order = [n for n, _ in named]
    pm = PeftModel.from_pretrained(model64, str(out / "init"), is_trainable=True)
    pm.eval()
    # The adapters in gradlens' order: target weights in checkpoint order, A then B.
    by_module = {}
    for n, p in pm.named_parameters():
        if ".lora_A." in n or ".lora_B." in n:
            part = "lora_A" if ".lora_A." in n else "lora_B"
            module = n.removeprefix("base_model.model.").split(f".{part}.")[0]
            assert p.dtype == torch.float64, (n, p.dtype)
            by_module[(module, part)] = p
    adapters = []
    for n in order:
        module = n.removesuffix(".weight")
        if (module, "lora_A") in by_module:
            adapters.append((f"{module}.lora_A.weight", by_module[(module, "lora_A")]))
            adapters.append((f"{module}.lora_B.weight", by_module[(module, "lora_B")]))
    assert len(adapters) == len(by_module)
    for _, p in measured:
        p.requires_grad_(True)  # the base weights' gradient = the merged weight's
    params = [p for _, p in adapters]
    opt = torch.optim.AdamW([{"params": params, "weight_decay": c["weight_decay"]}], lr=c["lr"],
                            betas=(0.9, 0.999), eps=1e-8, foreach=False)
    make = {"constant": lambda o: get_constant_schedule_with_warmup(o, c["warmup_steps"]),
            "linear": lambda o: get_linear_schedule_with_warmup(o, c["warmup_steps"], c["steps"]),
            "cosine": lambda o: get_cosine_schedule_with_warmup(o, c["warmup_steps"], c["steps"])}
    sched = make[c["schedule"]](opt)

    steps_f = open(out / "steps.jsonl", "w")
    per_f = open(out / "per_sample.jsonl", "w")
    wrt = [p for _, p in measured] + params
    clipped_steps = 0
    for step in range(1, c["steps"] + 1):
        batch = tr.batch_of(usable, step, c["batch_size"], c["shuffle"])
        n_total = 0
        parts = []
        for i in batch:
            index, instr, o, ids, start = samples[i]
            loss, n = tr.sample_loss(pm, ids, start)
            grads = torch.autograd.grad(loss, wrt)
            parts.append((index, instr, o, ids, loss.item(), n, grads))
            n_total += n
        acc = [torch.zeros_like(p) for p in wrt]
        loss_sum = 0.0
        for index, instr, o, ids, loss, n, grads in parts:
            w = n / n_total
            for k, g in enumerate(grads):
                acc[k] += w * g
            loss_sum += loss * n
            line = {"step": step, "index": index, "instruction": instr, "output": o, "loss": loss,
                    "n_tokens": ids.shape[1], "n_loss_tokens": n}
            for k, (mname, _) in enumerate(measured):
                line[mname] = tr.stats_of(grads[k])
            per_f.write(json.dumps(line) + "\n")
        line = {"step": step, "lr": opt.param_groups[0]["lr"], "loss": loss_sum / n_total,
                "grad_norm": None, "n_samples": len(batch), "n_loss_tokens": n_total,
                "samples": batch}
        for k, (mname, _) in enumerate(measured):
            line[mname] = tr.stats_of(acc[k])
        m = len(measured)
        for k, (aname, p) in enumerate(adapters):
            line[aname] = tr.stats_of(acc[m + k])
            p.grad = acc[m + k].clone()
        norm = torch.nn.utils.clip_grad_norm_(params, c["max_grad_norm"])
        line["grad_norm"] = norm.item()
        clipped_steps += int(norm.item() > c["max_grad_norm"])
        steps_f.write(json.dumps(line) + "\n")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        for _, p in measured:
            p.grad = None
    steps_f.close()
    per_f.close()
    assert clipped_steps >= 2, f"{name}: clipping must bite (it did on {clipped_steps} steps)"
    pm.save_pretrained(str(out / "final"))
    # PEFT's merged model of the final adapter, measured as `gradlens grads` measures.
    merged = pm.merge_and_unload()
    lines, skipped, logits = mf.measure(merged, hf_tok, records, c["max_length"], instruct=c["instruct"],
                                        logits_at=True)
    with open(out / "merged_grads.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    (out / "merged_logits.json").write_text(json.dumps(logits) + "\n")
    # Committed: the base named as the repository does, no PEFT model card.
    for folder in ("init", "final"):
        cfg_path = out / folder / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = f"fixtures/{c['fixture']}"
        cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT saves a set: any order
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (out / folder / "README.md").unlink(missing_ok=True)
    (out / "args.json").write_text(json.dumps(c, indent=2) + "\n")
    print(f"{out}: {c['steps']} steps, usable samples {usable}, clipping on {clipped_steps} steps, "
          f"{len(lines)} merged-model lines")


def check(run_dir: Path) -> None:
    """A gradlens LoRA run's final/ adapter in PEFT: it loads, and PEFT's merged model measures as
    gradlens' merged model does (the run's final-merged/ or base + adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    cfg = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    base = Path(cfg["base_model_name_or_path"])
    model64 = mf.to_float64_reference(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager").eval())
    pm = PeftModel.from_pretrained(model64, str(run_dir / "final"))
    merged = pm.merge_and_unload()
    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(base))
    records = json.loads(DATA.read_text())
    lines, _, _ = mf.measure(merged, hf_tok, records, 64)
    out = run_dir / "peft_merged_grads.jsonl"
    with open(out, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    print(f"PEFT loaded {run_dir / 'final'} (r {cfg['r']}, alpha {cfg['lora_alpha']}); its merged "
          f"model's measurements: {out} (compare with gradlens grads --model {base} --adapter "
          f"{run_dir / 'final'} --max-length 64 --dtype f64)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append")
    ap.add_argument("--check", type=Path)
    a = ap.parse_args()
    if a.check:
        check(a.check)
        return
    torch.manual_seed(0)
    for name, c in CASES.items():
        if a.only and name not in a.only:
            continue
        run_case(name, c)


if __name__ == "__main__":
    main()
