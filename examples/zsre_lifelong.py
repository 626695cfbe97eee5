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

import logging
import os
import time

import torch

import wise_plugin
from wise_plugin.evaluation import apply_overrides, example_parser, lifelong_evaluate, write_result, \
    zsre_requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "wise", "ZsRE", "zsre_mend_edit.json")


def main() -> None:
    parser = example_parser(__doc__.splitlines()[0], os.path.join(ROOT, "hparams", "WISE", "smollm2-135m.yaml"),
                            DEFAULT_DATA, os.path.join(ROOT, "results", "zsre_lifelong"), n=10)
    parser.add_argument("--save", help="write the WISE checkpoint to this folder after editing")
    parser.add_argument("--load", help="load a WISE checkpoint folder before the first edit")
    parser.add_argument("--edited-before", type=int, default=0,
                        help="the first K records are already in the --load checkpoint: edit only the rest")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)

    hparams = wise_plugin.WISEHyperParams.from_hparams(args.hparams)
    hparams.lifelong = True
    apply_overrides(hparams, args.set, parser)
    if args.edited_before and not args.load:
        parser.error("--edited-before needs --load (the checkpoint that holds those edits)")
    hparams.save_path, hparams.load_path = args.save, args.load
    editor = wise_plugin.load_editor(hparams)
    requests = zsre_requests(args.data, args.n, args.start)
    start = time.perf_counter()
    result = lifelong_evaluate(editor, requests, edited_before=args.edited_before)
    result.update(wall_seconds=time.perf_counter() - start, hparams=args.hparams, overrides=args.set,
                  data=os.path.relpath(args.data, ROOT), start=args.start)
    print(write_result(result, args.out, "Lifelong ZsRE, WISE on SmolLM2-135M", {
        "T": result["n"], "rewrite_acc": result["rewrite_acc"], "rephrase_acc": result["rephrase_acc"],
        "locality": result["locality"], "near-miss": result.get("near_miss"),
        "greedy contains target": result["greedy_acc"],
        "s/edit": f"{result['edit_seconds_per_edit']:.1f}"}))


if __name__ == "__main__":
    main()
