"""The runner's scoring, one request at a time against batched: same records, how much faster?

    .venv/bin/python benchmarks/scoring_batch.py --hparams WISE/smollm2-135m-dense --dataset counterfact \
        --data ../shared/data/counterfact/counterfact-edit-1k.json --n 64 --out results/scoring_batch_cf

Scoring after the edits dominates a long run (the 1,000-edit CounterFact stream scored for about an
hour after 20 minutes of edits): each request gets the host's teacher-forced scores, a greedy
answer, two WILD answers and the greedy continuations of its near-miss prompts. On a CPU, one
row's decoding is bound by reading the weights, so the runner scores ``--score-batch`` requests
together and their generations share left-padded batches. This script edits the first ``--n``
requests of the data as one stream through the runner's own edit function, then scores all of them
after the last edit with the runner's own scoring twice, one request per block and ``--batch``
requests per block, and reports whether the two give the same records and the time of each.
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from typing import Any

from tqdm.auto import tqdm

from wise_plugin.evaluation import GENERATION_BATCH
from wise_plugin.runner.datasets import FORMATS, dataset_format, load_requests
from wise_plugin.runner.editors import build_editor, load_specs
from wise_plugin.runner.near_miss import stream_prompts
from wise_plugin.runner.protocol import RunOptions, _blocks, _edit, _near_miss_of, _score, _score_block, with_loc_prompts
from wise_plugin.wise.caches import SetupCache

logger = logging.getLogger("wise_plugin.benchmarks.scoring_batch")


def timed_blocks(editor: Any, items: list[tuple], fmt: Any, options: RunOptions, edited: set[str],
                 size: int) -> tuple[list[dict[str, Any]], float]:
    """Records of ``items`` scored in blocks of ``size``, and the seconds it took."""
    start, records = time.perf_counter(), []
    for block in tqdm(_blocks(items, size), desc=f"scoring, blocks of {size}", leave=False):
        records += _score_block(editor, block, fmt, options, edited, generation=True)
    return records, time.perf_counter() - start


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default="WISE/smollm2-135m-dense", help="a WISE or LEMoE YAML (path or shipped name)")
    parser.add_argument("--dataset", default="counterfact", choices=sorted(FORMATS))
    parser.add_argument("--data", nargs="+", required=True, help="the edit file(s), as for wise-plugin compare")
    parser.add_argument("--n", type=int, default=64, help="requests edited as one stream, then scored")
    parser.add_argument("--batch", type=int, default=GENERATION_BATCH, help="requests per scoring block")
    parser.add_argument("--out", default="results/scoring_batch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    fmt = dataset_format(args.dataset)
    options = RunOptions(t_values=(args.n,), n=args.n, progress=False)
    requests = with_loc_prompts(load_requests(args.dataset, args.data)[:args.n], options)
    if len(requests) < args.n:
        parser.error(f"--n {args.n}: the data holds {len(requests)} requests.")
    spec = load_specs([args.hparams])[0]
    editor = build_editor(spec)
    before = [_score(editor, r, fmt.eval_metric, options.eval_target_tokens)
              for r in tqdm(requests, desc="scoring before edits", leave=False)]
    near_before = _near_miss_of(editor, [r.get("near_miss", []) for r in requests], options.near_miss_tokens)
    cache = SetupCache()
    edit_seconds = [_edit(editor, r, cache) for r in tqdm(requests, desc="edits", leave=False)]
    items = [(r, i, b, nb) for i, (r, b, nb) in enumerate(zip(requests, before, near_before))]
    edited = stream_prompts(requests)
    alone, alone_s = timed_blocks(editor, items, fmt, options, edited, 1)
    batched, batched_s = timed_blocks(editor, items, fmt, options, edited, args.batch)
    differ = [i for i, (a, b) in enumerate(zip(alone, batched)) if a != b]
    result = {
        "hparams": spec.path, "dataset": args.dataset, "data": args.data, "n": args.n, "batch": args.batch,
        "edit_s_per_edit": sum(edit_seconds) / args.n,
        "score_s_per_request_alone": alone_s / args.n, "score_s_per_request_batched": batched_s / args.n,
        "speedup": alone_s / batched_s, "records_differ": len(differ), "differing_indices": differ,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump({**result, "records_alone": alone, "records_batched": batched}, handle, indent=1)
    table = ("| editor | dataset | n | scoring s/request, one at a time | batched (blocks of {b}) | speedup | "
             "records that differ |\n|---|---|---|---|---|---|---|\n| {h} | {d} | {n} | {a:.2f} | {s:.2f} | {x:.2f}x | {f} |\n"
             ).format(b=args.batch, h=spec.label, d=args.dataset, n=args.n, a=result["score_s_per_request_alone"],
                      s=result["score_s_per_request_batched"], x=result["speedup"], f=len(differ))
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(f"# Scoring one request at a time against batched\n\n{table}")
    print(table)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
