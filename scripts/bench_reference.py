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
    ap.add_argument("--variant", choices=["paper", "svdvals"], default="paper")
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


if __name__ == "__main__":
    main()
