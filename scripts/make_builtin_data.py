#!/usr/bin/env python3
"""Write gradlens' own small data set (datasets/builtin/, committed): arithmetic word problems, each
with an answer-only, a short-rationale and a step-by-step response, and irrelevant versions made by
shuffling sentences across samples: the paper's six reasoning conditions in miniature. Deterministic.
"""
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N = 40
NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Liam"]
ITEMS = ["apples", "books", "marbles", "stamps", "coins", "pencils", "shells", "cards"]


def problem(rng: random.Random):
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(3, 60), rng.randint(2, 30), rng.randint(2, 6)
    kind = rng.choice(["buy_then_share", "lose_then_double", "sell_and_buy"])
    if kind == "buy_then_share":
        total = a + b
        per = total // c
        q = (f"{who} has {a} {item} and buys {b} more. {who} shares them equally among {c} friends, "
             f"keeping the rest. How many {item} does each friend get?")
        short = f"{who} has {a} + {b} = {total} {item}, and {total} // {c} = {per}."
        steps = [f"{who} starts with {a} {item}.", f"After buying {b} more, {who} has {a} + {b} = {total} {item}.",
                 f"Sharing {total} {item} equally among {c} friends gives each friend {total} // {c} = {per}.",
                 f"{total - per * c} {item} are left over for {who}."]
        ans = per
    elif kind == "lose_then_double":
        left = max(a - b, 1)
        ans = left * c
        q = f"{who} had {a} {item}, lost {min(b, a - 1)} of them, and then the collection grew {c} times. How many {item} now?"
        b = min(b, a - 1)
        left = a - b
        ans = left * c
        short = f"{a} - {b} = {left}, and {left} * {c} = {ans}."
        steps = [f"{who} had {a} {item} at first.", f"Losing {b} leaves {a} - {b} = {left}.",
                 f"Growing {c} times gives {left} * {c} = {ans}."]
    else:
        price = rng.randint(2, 9)
        earned = a * price
        ans = earned // (price + 1)
        q = (f"{who} sells {a} {item} at {price} dollars each and spends all the money on new {item} "
             f"costing {price + 1} dollars each. How many new {item} does {who} get?")
        short = f"{a} * {price} = {earned} dollars, and {earned} // {price + 1} = {ans}."
        steps = [f"{who} sells {a} {item} at {price} dollars each.", f"That earns {a} * {price} = {earned} dollars.",
                 f"Each new item costs {price + 1} dollars, so {earned} // {price + 1} = {ans} new {item}.",
                 f"{earned - ans * (price + 1)} dollars are left."]
    return q, str(ans), short + f" The answer is {ans}.", " ".join(steps) + f" Therefore, the answer is {ans}."


def shuffle_responses(records, rng):
    """Irrelevant responses: each response rebuilt from sentences of other samples' responses."""
    sentences = [re.split(r"(?<=[.!?])\s+", r["output"]) for r in records]
    out = []
    for i, r in enumerate(records):
        pool = [s for j, ss in enumerate(sentences) if j != i for s in ss]
        k = max(1, len(sentences[i]))
        out.append({**r, "output": " ".join(rng.sample(pool, k))})
    return out


def main():
    rng = random.Random(2410_23743)
    problems = [problem(rng) for _ in range(N)]
    styles = {"arith_train_no_cot": 1, "arith_train_with_cot": 2, "arith_train_with_cot_detailed": 3}
    for stem, col in styles.items():
        records = [{"instruction": p[0], "input": "", "output": p[col]} for p in problems]
        for folder, recs in [("arith", records), ("arith_wrong_answer_shuffle", shuffle_responses(records, random.Random(col)))]:
            path = ROOT / "datasets" / "builtin" / folder / f"{stem}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(recs, indent=1) + "\n")
    lines = ["# gradlens' own data set: the paper's six reasoning conditions in miniature (arithmetic word",
             "# problems; scripts/make_builtin_data.py). Paths relative to datasets/builtin/.",
             'name = "builtin"',
             "# The files ship with this manifest: a run's data root ($GRADLENS_DATA, --data-root) does not apply.",
             'data_root = "builtin"', ""]
    for label, folder, correct in [("correct", "arith", True), ("irrelevant", "arith_wrong_answer_shuffle", False)]:
        for cot, stem, cot_name in [("none", "arith_train_no_cot", "None CoT"),
                                    ("simplified", "arith_train_with_cot", "Simplified CoT"),
                                    ("detailed", "arith_train_with_cot_detailed", "Detailed CoT")]:
            lines += ["[[condition]]", f'id = "builtin/arith/{cot}/{label}"', f'file = "{folder}/{stem}.json"',
                      'group = "reasoning"', 'dataset = "arith"', f'cot = "{cot}"',
                      f"correct = {'true' if correct else 'false'}", f'name = "Arithmetic, {cot_name}, {label}"', ""]
    (ROOT / "datasets" / "builtin.toml").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
