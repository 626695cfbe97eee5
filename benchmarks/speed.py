"""Edit speed (fast vs reference path), peak memory and inference overhead of WISE on SmolLM2.

    .venv/bin/python benchmarks/speed.py --out results/speed

Writes <out>.json and <out>.md. Edits are ZsRE records from ../shared/data, made one by one with
the repository's SmolLM2 YAML; the fast and the reference path edit the same records from the
same model (the reference caches nothing: every row the loss reads, irrelevant rows included, runs
through the full model every iteration). Inference overhead is the median forward time of a batch of prompts through the
edited model divided by that of the unedited model, timed alternately in the same process:
WISE-Merge (4 edits, two shards merged into one memory) and WISE-Retrieve with 1, 4 and 16 memories.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

import torch

import wise_plugin
from wise_plugin.evaluation import apply_overrides, zsre_requests
from wise_plugin.wise import apply_wise_to_model, find_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "wise", "ZsRE", "zsre_mend_edit.json")
logger = logging.getLogger("benchmarks.speed")


def timed_edits(model: Any, tok: Any, requests: list[dict], hparams: Any) -> list[float]:
    seconds = []
    for request in requests:
        start = time.perf_counter()
        apply_wise_to_model(model, tok, [request], hparams)
        seconds.append(time.perf_counter() - start)
    return seconds


@torch.no_grad()
def all_memories(layer: Any) -> torch.Tensor:
    """Every side memory's change ``W_m - W``: retired WISE-Retrieve groups, then the active one."""
    retired = [layer.retired.delta(m, torch.float32).flatten() for m in range(len(layer.retired))]
    return torch.cat(retired + [(layer.side_weight - layer.base.weight).flatten()])


@torch.no_grad()
def overhead(edited: Any, plain: Any, batch: dict, repeats: int) -> float:
    """Median forward time of ``edited`` over that of ``plain``, alternating the two."""
    times: dict[str, list[float]] = {"edited": [], "plain": []}
    for _ in range(2):  # warm-up
        edited(**batch)
        plain(**batch)
    for _ in range(repeats):
        for name, model in (("edited", edited), ("plain", plain)):
            start = time.perf_counter()
            model(**batch)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["edited"]) / statistics.median(times["plain"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=os.path.join(ROOT, "hparams", "WISE", "smollm2-135m.yaml"))
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=10, help="edits timed per path (median reported)")
    parser.add_argument("--repeats", type=int, default=30, help="forward passes timed per overhead ratio")
    parser.add_argument("--threads", type=int, help="torch threads for both paths (default: torch's choice)")
    parser.add_argument("--skip-reference", action="store_true", help="time only the fast path")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "speed"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a hyper-parameter of --hparams for both paths, e.g. --set stop_token_prob=null")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    hparams = wise_plugin.WISEHyperParams.from_hparams(args.hparams)
    apply_overrides(hparams, args.set, parser)
    hparams.lifelong = True
    editor = wise_plugin.load_editor(hparams)
    pristine, tok = copy.deepcopy(editor.model).eval(), editor.tok
    requests = zsre_requests(args.data, args.n)
    result: dict[str, Any] = {"command": " ".join(sys.argv), "hparams": os.path.relpath(args.hparams, ROOT),
                              "overrides": args.set,
                              "n_edits": args.n, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "machine": f"{platform.machine()} {os.cpu_count()} cores"}

    fast_model = copy.deepcopy(pristine)
    result["fast_seconds"] = timed_edits(fast_model, tok, requests, hparams)
    if not args.skip_reference:
        reference_model = copy.deepcopy(pristine)
        reference = copy.deepcopy(hparams)
        reference.fast_path = False
        result["reference_seconds"] = timed_edits(reference_model, tok, requests, reference)
        a, b = all_memories(find_layer(fast_model)), all_memories(find_layer(reference_model))
        result["side_memory_max_abs_diff"] = float((a - b).abs().max())
        result["side_memory_rel_diff"] = float((a - b).norm() / a.norm())
        result["speedup"] = statistics.median(result["reference_seconds"]) / statistics.median(result["fast_seconds"])
        del reference_model
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    prompts = [r["prompt"] for r in zsre_requests(args.data, 32, 500)]
    batch = tok(prompts, return_tensors="pt", padding=True)
    merge = copy.deepcopy(hparams)  # WISE-Merge: one memory, two shards merged after 4 edits
    merge.retrieve, merge.save_freq, merge.merge_freq = False, 2, 4
    merge_model = copy.deepcopy(pristine)
    apply_wise_to_model(merge_model, tok, zsre_requests(args.data, 4, 200), merge)
    assert find_layer(merge_model).book.threshold is not None and not find_layer(merge_model).book.group_thresholds
    ratios = {"merge": overhead(merge_model, pristine, batch, args.repeats)}
    del merge_model
    retrieve = copy.deepcopy(hparams)
    retrieve.retrieve, retrieve.save_freq, retrieve.merge_freq = True, 1, 1  # one memory per edit
    retrieve_model = copy.deepcopy(pristine)
    made = 0
    for memories in (1, 4, 16):
        more = zsre_requests(args.data, memories - made, 100 + made)
        apply_wise_to_model(retrieve_model, tok, more, retrieve)
        made = memories
        assert len(find_layer(retrieve_model).book.group_thresholds) == memories
        ratios[f"retrieve_{memories}"] = overhead(retrieve_model, pristine, batch, args.repeats)
    result["inference_overhead"] = ratios

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    median = lambda key: statistics.median(result[key]) if key in result else float("nan")  # noqa: E731
    lines = [
        f"Command: `{result['command']}` ({result['machine']}, torch {result['torch']}, {result['threads']} threads)", "",
        "| measure | value |", "|---|---|",
        f"| seconds per edit, fast path (median of {args.n}) | {median('fast_seconds'):.1f} |",
        f"| seconds per edit, reference path (median of {args.n}) | {median('reference_seconds'):.1f} |",
        f"| speed-up | {result.get('speedup', float('nan')):.1f}x |",
        f"| side memory difference fast vs reference (relative) | {result.get('side_memory_rel_diff', float('nan')):.2e} |",
        f"| peak RSS | {result['peak_rss_mib']:.0f} MiB |",
    ] + [f"| inference time vs unedited, {name.replace('_', ' ')} memories | {ratio:.3f}x |"
         if name != "merge" else f"| inference time vs unedited, Merge | {ratio:.3f}x |" for name, ratio in ratios.items()]
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
