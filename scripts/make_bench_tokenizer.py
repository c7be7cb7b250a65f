#!/usr/bin/env python3
"""Makes configs/tokenizer/tokenizer.json: a 32k byte-level BPE (Qwen2's kind) trained on the texts of
../shared/paper-data, for benchmarks on random checkpoints at real shapes (`gradlens init
--tokenizer configs/tokenizer`). Its token counts on the paper's samples are close to a real
tokenizer's (aqua Detailed CoT: mean 524 tokens), where the fixtures' 600-token vocabularies give
twice as many. Run by hand from the repository root: pip install tokenizers
"""
import json, glob, os
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders, normalizers
files = sorted(glob.glob('../shared/paper-data/**/*.json', recursive=True))
def texts():
    for f in files:
        for r in json.load(open(f)):
            for k in ('instruction','input','output'):
                v = r.get(k)
                if isinstance(v, str) and v: yield v
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
tr = trainers.BpeTrainer(vocab_size=32000, special_tokens=["<|endoftext|>","<|im_start|>","<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(texts(), tr)
tok.save('configs/tokenizer/tokenizer.json')
print(tok.get_vocab_size(), len(files))
# Token counts of the benchmark's samples.
d=json.load(open('../shared/paper-data/cot_500/aqua_train_with_cot_gpt4o.json'))
tot=[len(tok.encode(r['instruction']+r['input']).ids)+len(tok.encode(r['output']).ids) for r in d[:50]]
import statistics; print('mean',statistics.mean(tot),'median',statistics.median(tot),'max',max(tot),'>1024',sum(t>1024 for t in tot))
