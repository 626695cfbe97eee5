"""Edit a few facts of the embedded SmolLM2 with WISE through EasyEdit's BaseEditor, and show the effect.

Run with ``make demo`` (or ``wise-plugin demo``). It prints teacher-forced metrics from
EasyEdit's ``compute_edit_quality`` before and after all edits, and greedy generations.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from typing import Any, Sequence

import torch

import wise_plugin
from wise_plugin.editor import load_editor
from wise_plugin.evaluation import greedy_answers, lifelong_evaluate

DEFAULT_HPARAMS = "WISE/smollm2-135m"  # a shipped recipe, found by name from a checkout or a wheel


def demo_requests() -> list[dict[str, Any]]:
    """The built-in demo edits (written for this project) as EasyEdit request dicts."""
    with resources.files("wise_plugin").joinpath("data", "demo_edits.json").open(encoding="utf-8") as handle:
        records = json.load(handle)
    return [{
        "prompt": r["prompt"], "target_new": r["target_new"], "ground_truth": r["ground_truth"],
        "rephrase_prompt": r["rephrase_prompt"], "portability": {},
        "locality": {"neighborhood": {"prompt": r["locality_prompt"], "ground_truth": r["locality_ground_truth"]}},
        "near_miss": [r["locality_prompt"]],  # the same relation with another subject: "The capital of Canada is"
    } for r in records]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``wise-plugin demo``."""
    parser.add_argument("--hparams", default=DEFAULT_HPARAMS, help="WISE hparams YAML: a path or a shipped recipe's name (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Edit the demo facts, print metrics and greedy generations before and after."""
    torch.manual_seed(args.seed)
    hparams = wise_plugin.WISEHyperParams.from_hparams(args.hparams)
    hparams.lifelong = True  # keep every edit: the metrics below are read after the last one
    editor = load_editor(hparams)
    requests = demo_requests()
    # Rephrases are statements, not questions: after a bare question ("Which city is the capital of
    # Australia?") the unedited instruct model ends its turn (greedy <|im_end|> on all five), so a
    # question would measure the chat format, not whether the edit carries over to new wording.
    probes = [(r["prompt"], r["target_new"]) for r in requests] + [
        (r["rephrase_prompt"], r["target_new"]) for r in requests] + [
        (r["locality"]["neighborhood"]["prompt"], r["locality"]["neighborhood"]["ground_truth"]) for r in requests
    ]
    prompts = [p for p, _ in probes]
    before = dict(zip(prompts, greedy_answers(editor.model, editor.tok, prompts)))
    result = lifelong_evaluate(editor, requests)
    after = dict(zip(prompts, greedy_answers(editor.model, editor.tok, prompts)))

    print("\nWISE on SmolLM2-135M-Instruct through EasyEdit's BaseEditor: "
          f"{result['n']} edits, all scored after the last one")
    print(f"{'prompt':45} {'target':18} {'rel pre':>7} {'rel':>5} {'gen':>5} {'loc':>5} {'near':>5}")
    for r in result["records"]:
        print(f"{r['prompt'][:45]:45} {r['target_new'][:18]:18} {r['pre_rel']:7.2f} "
              f"{r['rel']:5.2f} {r['gen']:5.2f} {r['loc']:5.2f} {r['near']:5.2f}")
    print(f"mean: rewrite_acc {result['rewrite_acc']:.3f}  rephrase_acc {result['rephrase_acc']:.3f}  "
          f"locality {result['locality']:.3f}  near-miss unchanged {result['near_miss']:.3f}  "
          f"edit time {result['edit_seconds_per_edit']:.1f} s/edit\n")
    print("near: share of the edit's near-miss prompts (same relation, another subject) whose greedy "
          "continuation is unchanged")
    print("greedy generations (before -> after):")
    for prompt, expected in probes:
        print(f"  {prompt!r} [{expected}]\n      before: {before[prompt]!r}\n      after:  {after[prompt]!r}")
    return result


if __name__ == "__main__":
    from wise_plugin.cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
