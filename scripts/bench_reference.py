#!/usr/bin/env python3
"""The reference side of `cargo xtask bench`: the paper's pipeline (PyTorch + transformers; full SVD
of every measured gradient, as code_gradient/get_gradient_values.py does) or the svdvals variant a
careful PyTorch user would write, on the same checkpoint and samples as gradlens. Prints one JSON line.

    pip install torch transformers tokenizers safetensors
"""
import argparse
import json
import resource
import time

import torch


def peak_rss_mb():
    """This process's peak resident memory in MB. VmHWM of /proc/self/status where there is one:
    getrusage's ru_maxrss also counts the parent's resident memory at the fork (Linux keeps the
    pre-exec high-water mark), which here is gradlens itself, several GB on a 0.5B shape."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", choices=["paper", "svdvals", "train", "lora"], default="paper",
                    help="train: a transformers + torch.optim.AdamW fine-tuning loop (the paper's "
                         "attention selection trained, token-weighted batches, clip_grad_norm_), "
                         "no statistics")
    ap.add_argument("--batch-size", type=int, default=4, help="samples per step (--variant train)")
    ap.add_argument("--lora-r", type=int, default=8,
                    help="--variant lora: PEFT LoRA of this rank on q/k/v/o (alpha 2r), the same loop")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the paper ran on an H100)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed samples first")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).to(dev)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    for name, p in model.named_parameters():
        if p.ndim > 1 and (p.shape[0] == p.shape[1] or "self_attn" in name):
            p.requires_grad = True
    records = json.load(open(a.data))[: a.warmup + a.samples]
    if a.variant == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    if a.variant in ("train", "lora"):
        return train(a, tok, model, records, dev, sync)
    fb = st = 0.0
    n = tokens = 0
    for i, r in enumerate(records):
        instr = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        text = instr + "\n" + r["output"]
        ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=a.max_length)
        start = len(tok.encode(text[: text.rfind(r["output"])]))
        labels = ids.clone()
        labels[0, :start] = -100
        ids, labels = ids.to(dev), labels.to(dev)
        if i == a.warmup and cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        sync()
        t0 = time.perf_counter()
        out = model(ids, labels=labels)
        out.loss.backward()
        sync()
        t1 = time.perf_counter()
        for name, p in model.named_parameters():
            if p.grad is not None:
                g = p.grad
                _ = (g.mean().item(), g.max().item(), g.min().item(), torch.linalg.norm(g).item())
                if a.variant == "paper":
                    _, s, _ = torch.linalg.svd(g)
                else:
                    s = torch.linalg.svdvals(g)
                _ = (s.sum().item(), s.max().item(), s.min().item())
        model.zero_grad()
        sync()
        t2 = time.perf_counter()
        if i < a.warmup:
            continue
        fb += t1 - t0
        st += t2 - t1
        n += 1
        tokens += ids.shape[1]
    print(json.dumps({"variant": a.variant, "device": a.device, "samples": n, "fwd_bwd_s": fb / n,
                      "spectra_s": st / n, "samples_per_s": n / (fb + st), "mean_tokens": tokens / n,
                      "peak_rss_mb": peak_rss_mb(),
                      "peak_gpu_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None}))


def prepared(tok, r, max_length):
    instr = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
    text = instr + "\n" + r["output"]
    ids = tok.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    start = len(tok.encode(text[: text.rfind(r["output"])]))
    labels = ids.clone()
    labels[0, :start] = -100
    return ids, labels, int((labels[0, 1:] != -100).sum())


def train(a, tok, model, records, dev, sync):
    """The fine-tuning loop a careful PyTorch user writes (what `gradlens train` computes, without
    its statistics): per step, each sample's mean loss weighted by its share of the batch's response
    tokens, clip_grad_norm_(1.0), AdamW. The timed samples are those after --warmup (the other
    rows' samples); an untimed first step on the first batch of them comes before."""
    model.train(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, foreach=False)
    samples = [prepared(tok, r, a.max_length) for r in records[a.warmup:]]
    samples = [s for s in samples if s[2] > 0]
    b = a.batch_size
    batches = [samples[:b]] + [samples[i:i + b] for i in range(0, len(samples) - b + 1, b)]
    fb = st = 0.0
    n = tokens = 0
    for k, batch in enumerate(batches):
        total = sum(s[2] for s in batch)
        sync()
        t0 = time.perf_counter()
        for ids, labels, m in batch:
            out = model(ids.to(dev), labels=labels.to(dev))
            (out.loss * (m / total)).backward()
        sync()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        if k == 0:
            continue
        fb += t1 - t0
        st += t2 - t1
        n += len(batch)
        tokens += sum(s[0].shape[1] for s in batch)
    print(json.dumps({"variant": a.variant, "device": a.device, "samples": n, "fwd_bwd_s": fb / n,
                      "spectra_s": st / n, "samples_per_s": n / (fb + st), "mean_tokens": tokens / n,
                      "peak_rss_mb": peak_rss_mb(),
                      "peak_gpu_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if a.device != "cpu" else None}))


if __name__ == "__main__":
    main()
