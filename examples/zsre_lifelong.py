"""Lifelong ZsRE editing through EasyEdit's BaseEditor: T sequential edits, then all T scored.

Example (the acceptance run of the first WISE issue):
    .venv/bin/python examples/zsre_lifelong.py --n 10 --out results/zsre_t10
Resuming from a checkpoint (edit 50, save, then edit the next 50 in a new process, score all 100):
    .venv/bin/python examples/zsre_lifelong.py --n 50 --save results/ckpt50 --out results/first50
    .venv/bin/python examples/zsre_lifelong.py --n 100 --load results/ckpt50 --edited-before 50 --out results/resumed

Reads the edit set from ../shared/data (never copied into this repository), edits it with the
given WISE hparams, scores every edit after the last one with EasyEdit's compute_edit_quality
(locality against the unedited model), and writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import numpy as np
import torch

import wise_plugin
from wise_plugin.evaluation import greedy_answer, lifelong_evaluate, zsre_requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "wise", "ZsRE", "zsre_mend_edit.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=os.path.join(ROOT, "hparams", "WISE", "smollm2-135m.yaml"))
    parser.add_argument("--data", default=DEFAULT_DATA, help="ZsRE edit file (WISE layout)")
    parser.add_argument("--n", type=int, default=10, help="number of sequential edits T")
    parser.add_argument("--start", type=int, default=0, help="index of the first record")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "zsre_lifelong"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the WISE checkpoint to this folder after editing")
    parser.add_argument("--load", help="load a WISE checkpoint folder before the first edit")
    parser.add_argument("--edited-before", type=int, default=0,
                        help="the first K records are already in the --load checkpoint: edit only the rest")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override an hparams value, e.g. --set act_ratio=0.9 (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)

    hparams = wise_plugin.WISEHyperParams.from_hparams(args.hparams)
    hparams.lifelong = True
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(hparams, key):
            parser.error(f"--set {item}: {key!r} is not a WISE hparams key")
        setattr(hparams, key, json.loads(value))
    if args.edited_before and not args.load:
        parser.error("--edited-before needs --load (the checkpoint that holds those edits)")
    hparams.save_path, hparams.load_path = args.save, args.load
    editor = wise_plugin.load_editor(hparams)
    requests = zsre_requests(args.data, args.n, args.start)
    start = time.perf_counter()
    result = lifelong_evaluate(editor, requests, edited_before=args.edited_before)
    generations = [greedy_answer(editor.model, editor.tok, r["prompt"]) for r in requests]
    hits = [r["target_new"].strip().lower() in g.lower() for r, g in zip(requests, generations)]
    for record, generation, hit in zip(result["records"], generations, hits):
        record.update(greedy=generation, greedy_hit=bool(hit))
    result.update(
        greedy_acc=float(np.mean(hits)), wall_seconds=time.perf_counter() - start, command=" ".join(sys.argv),
        hparams=args.hparams, overrides=args.set, data=os.path.relpath(args.data, ROOT), start=args.start,
        machine=f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}",
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    summary = (
        f"| T | rewrite_acc | rephrase_acc | locality | greedy contains target | s/edit |\n|---|---|---|---|---|---|\n"
        f"| {result['n']} | {result['rewrite_acc']:.3f} | {result['rephrase_acc']:.3f} | {result['locality']:.3f} "
        f"| {result['greedy_acc']:.3f} | {result['edit_seconds_per_edit']:.1f} |\n"
    )
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(f"# Lifelong ZsRE, WISE on SmolLM2-135M\n\nCommand: `{result['command']}`\n\n{summary}")
    print(summary)


if __name__ == "__main__":
    main()
