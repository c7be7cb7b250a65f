#!/usr/bin/env python3
"""Goldens of ggml's block formats (run by hand): random blocks of every type gradlens dequantizes
(their f16 scales drawn finite), dequantized by transformers' GGUF code, written to
fixtures/gguf-blocks/blocks.json as hex bytes and the expected f32 values. gradlens' dequantizer
must give the same values bit for bit (crates/gradlens-core/src/gguf/dequant.rs, tests/gguf.rs).

    python scripts/make_gguf_block_goldens.py
"""
import json
from pathlib import Path

import numpy as np
import torch
from transformers.integrations.gguf.dequant import dequantize

ROOT = Path(__file__).resolve().parent.parent
# type id -> (block bytes, byte offsets of f16 scales)
TYPES = {"Q4_0": (2, 18, [0]), "Q4_1": (3, 20, [0, 2]), "Q8_0": (8, 34, [0]),
         "Q4_K": (12, 144, [0, 2]), "Q5_K": (13, 176, [0, 2]), "Q6_K": (14, 210, [208])}


def main():
    rng = np.random.default_rng(7)
    out = {}
    for name, (ty, width, scales) in TYPES.items():
        blocks = rng.integers(0, 256, size=(3, width), dtype=np.uint8)
        for off in scales:
            halves = rng.uniform(-0.05, 0.05, size=3).astype(np.float16)
            blocks[:, off:off + 2] = halves.view(np.uint8).reshape(3, 2)
        raw = torch.from_numpy(blocks.reshape(-1).copy())
        values = dequantize(raw, ty, torch.float32).numpy()
        out[name] = {"type": ty, "hex": blocks.reshape(-1).tobytes().hex(),
                     "values": [float(v) for v in values]}
    path = ROOT / "fixtures/gguf-blocks/blocks.json"
    path.write_text(json.dumps(out) + "\n")
    print(path, {k: len(v["values"]) for k, v in out.items()})


if __name__ == "__main__":
    main()
