#!/usr/bin/env python3
"""Write datasets/paper.toml: the paper's 56 conditions (run by hand; the output is committed)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REASONING = ["aqua", "creak", "ecqa", "gsm8k", "sensemaking", "strategyqa"]
MATH = ["algebra", "counting_probability", "geometry"]
WIKI = [("popular_100", "popular_wikipedia_100", "Popular wiki (~100 words)"),
        ("popular_500", "popular_wikipedia_500", "Popular wiki (~500 words)"),
        ("popular_1000", "popular_wikipedia_1000", "Popular wiki (~1000 words)"),
        ("long_tail", "long_tail_wikipedia", "Long-tail wiki")]
COT = {"none": ("no_cot", "None CoT"), "simplified": ("with_cot", "Simplified CoT"),
       "detailed": ("with_cot_gpt4o", "Detailed CoT")}
PRETTY = {"aqua": "AQuA", "creak": "CREAK", "ecqa": "ECQA", "gsm8k": "GSM8K", "sensemaking": "Sensemaking",
          "strategyqa": "StrategyQA", "algebra": "MATH Algebra", "counting_probability": "MATH Counting & Probability",
          "geometry": "MATH Geometry"}


def entry(id_, file, group, dataset, cot, correct, name):
    lines = ["[[condition]]", f'id = "{id_}"', f'file = "{file}"', f'group = "{group}"', f'dataset = "{dataset}"']
    if cot:
        lines.append(f'cot = "{cot}"')
    lines += [f"correct = {'true' if correct else 'false'}", f'name = "{name}"', ""]
    return "\n".join(lines)


def main():
    out = ['# The conditions of arXiv 2410.23743, one per data file of the paper\'s repository',
           '# (MingLiiii/Layer_Gradient, folder data/). Paths are relative to the data root',
           '# (--data-root, $GRADLENS_DATA, or ../shared/paper-data beside the checkout). Written by scripts/make_manifests.py.',
           'name = "paper"', 'default_data_root = "../../shared/paper-data"', ""]
    for correct, suffix, label in [(True, "", "correct"), (False, "_wrong_answer_shuffle", "irrelevant")]:
        for d in REASONING:
            for cot, (stem, cot_name) in COT.items():
                out.append(entry(f"reasoning/{d}/{cot}/{label}", f"cot_500{suffix}/{d}_train_{stem}.json",
                                 "reasoning", d, cot, correct, f"{PRETTY[d]}, {cot_name}, {label}"))
        for d in MATH:
            for cot in ["simplified", "detailed"]:
                stem, cot_name = COT[cot]
                out.append(entry(f"math/{d}/{cot}/{label}", f"lighteval_math{suffix}/{d}_{stem}.json",
                                 "math", d, cot, correct, f"{PRETTY[d]}, {cot_name}, {label}"))
        for d, stem, pretty in WIKI:
            out.append(entry(f"wiki/{d}/{label}", f"wiki_popularity{suffix}/{stem}.json", "wiki", d, None, correct,
                             f"{pretty}, {label}"))
    (ROOT / "datasets" / "paper.toml").write_text("\n".join(out))
    print(f"{sum(1 for l in out if l.startswith('[[condition]]'))} conditions")


if __name__ == "__main__":
    main()
