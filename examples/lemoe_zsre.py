"""Lifelong ZsRE editing with LEMoE through EasyEdit's BaseEditor: T edits, then all T scored.

Examples (the acceptance runs of the LEMoE issue):
    python examples/lemoe_zsre.py --n 100 --order stream  --out results/lemoe_zsre_t100_stream
    python examples/lemoe_zsre.py --n 100 --order planned --out results/lemoe_zsre_t100_planned
    python examples/lemoe_zsre.py --n 100 --order planned --hparams hparams/LEMoE/smollm2-135m-gate.yaml \
        --out results/lemoe_zsre_t100_planned_gate

Reads the edit set from ../shared/data (never copied into this repository). ``--order stream``
sends the records in file order; ``--order planned`` first orders them with the k-means planner
(wise_plugin.lemoe.plan_requests) so each expert is filled from one cluster. Either way the host
gets one request per call. Every edit is scored after the last one with EasyEdit's
compute_edit_quality (locality against the unedited model); writes <out>.json and <out>.md.
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
from wise_plugin.host import register
from wise_plugin.lemoe import LEMoEHyperParams, apply_lemoe_to_model, find_layer, plan_requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "wise", "ZsRE", "zsre_mend_edit.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=os.path.join(ROOT, "hparams", "LEMoE", "smollm2-135m.yaml"))
    parser.add_argument("--data", default=DEFAULT_DATA, help="ZsRE edit file (WISE layout)")
    parser.add_argument("--n", type=int, default=100, help="number of sequential edits T")
    parser.add_argument("--start", type=int, default=0, help="index of the first record")
    parser.add_argument("--order", choices=("stream", "planned"), default="stream")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "lemoe_zsre"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy-generation check")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override an hparams value, e.g. --set lr=0.01 (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    register("LEMoE", apply_lemoe_to_model)

    hparams = LEMoEHyperParams.from_hparams(args.hparams)
    hparams.lifelong = True
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(hparams, key):
            parser.error(f"--set {item}: {key!r} is not a LEMoE hparams key")
        setattr(hparams, key, json.loads(value))
    editor = wise_plugin.load_editor(hparams)
    requests = zsre_requests(args.data, args.n, args.start)
    if args.order == "planned":
        plan = plan_requests(editor.model, editor.tok, requests, hparams.edits_per_expert, hparams.seed)
        requests = [requests[i] for i in plan.order]
    start = time.perf_counter()
    result = lifelong_evaluate(editor, requests)
    layer = find_layer(editor.model)
    if not args.no_greedy:
        generations = [greedy_answer(editor.model, editor.tok, r["prompt"]) for r in requests]
        hits = [r["target_new"].strip().lower() in g.lower() for r, g in zip(requests, generations)]
        for record, generation, hit in zip(result["records"], generations, hits):
            record.update(greedy=generation, greedy_hit=bool(hit))
        result["greedy_acc"] = float(np.mean(hits))
    result.update(
        wall_seconds=time.perf_counter() - start, command=" ".join(sys.argv), hparams=args.hparams,
        overrides=args.set, order=args.order, gate=hparams.gate, data=os.path.relpath(args.data, ROOT),
        start=args.start, n_experts=len(layer.experts) if layer else 0,
        machine=f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}",
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    greedy = f"{result['greedy_acc']:.3f}" if "greedy_acc" in result else "-"
    summary = (
        "| T | order | gate | experts | rewrite_acc | rephrase_acc | locality | greedy contains target | s/edit |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {result['n']} | {args.order} | {'on' if hparams.gate else 'off'} | {result['n_experts']} "
        f"| {result['rewrite_acc']:.3f} | {result['rephrase_acc']:.3f} | {result['locality']:.3f} "
        f"| {greedy} | {result['edit_seconds_per_edit']:.1f} |\n"
    )
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(f"# Lifelong ZsRE, LEMoE on SmolLM2-135M\n\nCommand: `{result['command']}`\n\n{summary}")
    print(summary)


if __name__ == "__main__":
    main()
