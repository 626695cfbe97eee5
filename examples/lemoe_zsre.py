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

import logging
import os
import time

import torch

import wise_plugin
from wise_plugin.evaluation import apply_overrides, example_parser, lifelong_evaluate, write_result, \
    zsre_requests
from wise_plugin.lemoe import LEMoEHyperParams, find_layer, plan_requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "wise", "ZsRE", "zsre_mend_edit.json")


def main() -> None:
    parser = example_parser(__doc__.splitlines()[0], os.path.join(ROOT, "hparams", "LEMoE", "smollm2-135m.yaml"),
                            DEFAULT_DATA, os.path.join(ROOT, "results", "lemoe_zsre"), n=100)
    parser.add_argument("--order", choices=("stream", "planned"), default="stream")
    parser.add_argument("--no-greedy", action="store_true", help="skip the generation-based scores (greedy contains target, WILD exact match)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)

    hparams = LEMoEHyperParams.from_hparams(args.hparams)
    hparams.lifelong = True
    apply_overrides(hparams, args.set, parser)
    editor = wise_plugin.load_editor(hparams)
    requests = zsre_requests(args.data, args.n, args.start)
    if args.order == "planned":
        plan = plan_requests(editor.model, editor.tok, requests, hparams.edits_per_expert, hparams.seed)
        requests = [requests[i] for i in plan.order]
    start = time.perf_counter()
    result = lifelong_evaluate(editor, requests, generation=not args.no_greedy)
    layer = find_layer(editor.model)
    result.update(wall_seconds=time.perf_counter() - start, hparams=args.hparams, overrides=args.set,
                  order=args.order, gate=hparams.gate, data=os.path.relpath(args.data, ROOT), start=args.start,
                  n_experts=len(layer.experts) if layer else 0)
    print(write_result(result, args.out, "Lifelong ZsRE, LEMoE on SmolLM2-135M", {
        "T": result["n"], "order": args.order, "gate": "on" if hparams.gate else "off",
        "experts": result["n_experts"], "rewrite_acc": result["rewrite_acc"], "rephrase_acc": result["rephrase_acc"],
        "locality": result["locality"], "near-miss": result.get("near_miss"),
        "greedy contains target": result.get("greedy_acc"),
        "s/edit": f"{result['edit_seconds_per_edit']:.1f}"}))


if __name__ == "__main__":
    main()
