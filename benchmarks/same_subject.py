"""Other facts of an edited subject: does an edit change what the model says about its subject elsewhere?

    .venv/bin/python benchmarks/same_subject.py --hparams WISE/smollm2-135m WISE/smollm2-135m-dense \
        --n 30 --T 10 --out results/same_subject

A near miss (the runner's near-miss locality) keeps the relation and swaps the subject. This is the
other direction: keep the subject, change the relation. For each CounterFact record (records 0..n-1)
the script takes ``--probes`` prompts of other relations, question templates of other records of
the file with this record's subject filled in ("Danielle Darrieux was born in" beside the edit
"The mother tongue of Danielle Darrieux is -> English"), and reads their greedy continuation
(``--tokens`` tokens) before and after the record's chunk of T edits. Each editor edits the same
chunks on a fresh copy of the model. It reports the share of such prompts whose continuation is
unchanged, and the share whose continuation now contains the edit's new answer. Some change is
welcome (a ripple: "Noise Unit, which is located in" after "Noise Unit was formulated in -> Japan"),
so neither share has a right value; they show how far an edit spreads over its subject.
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import sys
from typing import Any

import torch
from tqdm.auto import tqdm

from wise_plugin.evaluation import contains_target, greedy_answer
from wise_plugin.runner.near_miss import template

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "counterfact", "counterfact-edit-1k.json")
logger = logging.getLogger("wise_plugin.benchmarks.same_subject")


def other_relation_prompts(records: list[dict[str, Any]], count: int, probes: int) -> list[list[str]]:
    """``probes`` prompts per record (the first ``count``): other records' templates with its subject."""
    templates = sorted({template(r["prompt"], r["subject"]) for r in records if r["subject"] in r["prompt"]})
    prompts = []
    for record in records[:count]:
        own = template(record["prompt"], record["subject"])
        rng = random.Random(f"{record['case_id']}:{probes}")
        prompts.append([t.format(record["subject"]) for t in rng.sample([t for t in templates if t != own], probes)])
    return prompts


def apply_edits(model: torch.nn.Module, tok: Any, hparams: Any, requests: list[dict[str, Any]]) -> None:
    from wise_plugin import LEMoEHyperParams, apply_lemoe_to_model, apply_wise_to_model

    apply = apply_lemoe_to_model if isinstance(hparams, LEMoEHyperParams) else apply_wise_to_model
    apply(model, tok, requests, hparams)


def load_hparams(name: str) -> Any:
    """A WISE or LEMoE YAML (path or shipped name), checked as the runner checks it."""
    from wise_plugin.runner.editors import load_spec

    spec = load_spec(name)
    if spec.alg_name not in ("WISE", "LEMoE"):
        raise SystemExit(f"{name}: alg_name {spec.alg_name!r}; this script edits with WISE or LEMoE only")
    return spec.hparams


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", nargs="+", required=True, help="WISE or LEMoE YAMLs (paths or shipped names)")
    parser.add_argument("--data", default=DATA, help="CounterFact edit file (default: ../shared/data)")
    parser.add_argument("--n", type=int, default=30, help="records 0..n-1 are edited")
    parser.add_argument("--T", type=int, default=10, help="edits per chunk, each chunk on a fresh model")
    parser.add_argument("--probes", type=int, default=3, help="other-relation prompts per record")
    parser.add_argument("--tokens", type=int, default=8, help="greedy tokens compared")
    parser.add_argument("--out", default="results/same_subject", help="writes <out>.json and <out>.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wise_plugin.embedded import smollm2_path

    with open(args.data, encoding="utf-8") as handle:
        records = json.load(handle)
    if args.n > len(records):
        parser.error(f"--n {args.n} is more than the {len(records)} records of {args.data}")
    torch.manual_seed(0)
    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token_id = tok.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    probes = other_relation_prompts(records, args.n, args.probes)
    before = [[greedy_answer(base, tok, p, args.tokens) for p in ps] for ps in tqdm(probes, desc="unedited")]
    rows = []
    for name in args.hparams:
        hparams = load_hparams(name)
        unchanged = with_target = total = 0
        for start in tqdm(range(0, args.n, args.T), desc=name):
            model = copy.deepcopy(base)
            chunk = records[start:start + args.T]
            apply_edits(model, tok, hparams, [{"prompt": r["prompt"], "target_new": r["target_new"],
                                                "ground_truth": r["ground_truth"], "subject": r["subject"]}
                                               for r in chunk])
            for index in range(start, start + len(chunk)):
                for prompt, old in zip(probes[index], before[index]):
                    new = greedy_answer(model, tok, prompt, args.tokens)
                    total += 1
                    unchanged += new == old
                    with_target += contains_target(new, records[index]["target_new"])
        rows.append({"hparams": name, "prompts": total, "unchanged": unchanged / total,
                     "contain_new_answer": with_target / total})
    result = {"command": " ".join([os.path.basename(sys.executable), "benchmarks/same_subject.py", *argv]),
              "data": args.data, "n": args.n, "T": args.T, "probes": args.probes, "tokens": args.tokens, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    lines = ["| hparams | prompts | continuation unchanged | contains the new answer |", "|---|---|---|---|"]
    lines += [f"| {r['hparams']} | {r['prompts']} | {r['unchanged']:.2f} | {r['contain_new_answer']:.2f} |" for r in rows]
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
