"""The cost of a long edit stream: seconds per edit, memory kept and inference overhead as edits pile up.

    .venv/bin/python benchmarks/scale.py --dataset counterfact --n 1000 --out results/scale_counterfact

Edits records 0..n-1 of the dataset one after another into one model, exactly as `wise-plugin
compare` edits a chunk (same editor, same apply call, the record's subject passed), with the
shipped WISE YAML unless --hparams names another. Every --every edits it records the median and
mean seconds per edit of that block, the memory the editor keeps (MB and share of the model's
parameter bytes, plus rebuildable caches), the inference overhead against an unedited copy (32
edit prompts and 32 irrelevant prompts, timed alternately in this process) and a quick Rel of the
block's edits (share of target tokens that are the top-1 prediction after the prompt, one forward
pass each). At the end the quick Rel of every edit is read again (T-final, as the protocol does).
It scores nothing else: quality at scale comes from `wise-plugin compare --T 1000`.

Resumable: the editor state is saved every --every edits under <out>/checkpoint; rerunning the
same command continues from there. Writes <out>.json, <out>.md and <out>.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from wise_plugin.core.checkpoint_files import write_atomic
from wise_plugin.host.guard import editor_parts, plugin_kind
from wise_plugin.runner.cost import PlainModels, inference_overhead, memory_kept, overhead_prompts
from wise_plugin.runner.datasets import load_requests
from wise_plugin.runner.editors import build_editor, load_spec
from wise_plugin.runner.protocol import RunOptions, _edit, _quick_rel, with_loc_prompts
from wise_plugin.wise.caches import SetupCache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"counterfact": os.path.join(os.path.dirname(ROOT), "shared", "data", "counterfact", "counterfact-edit-1k.json"),
        "zsre": os.path.join(os.path.dirname(ROOT), "shared", "data", "wise", "ZsRE", "zsre_mend_edit.json")}
logger = logging.getLogger("benchmarks.scale")


def measure(editor: Any, kind: str, plain: Any, block: list[dict], done: int, seconds: list[float],
            every: int) -> dict[str, Any]:
    """One row of the table, read after ``done`` edits."""
    editor.model.eval()
    last = seconds[-every:]
    row = {"edits": done, "median_s": statistics.median(last), "mean_s": statistics.mean(last),
           **(memory_kept(editor, kind) or {}),
           "overhead": inference_overhead(editor.model, plain, editor.tok, overhead_prompts(block)),
           "quick_rel_block": statistics.mean(_quick_rel(editor, r) for r in block[-every:])}
    layer = editor_parts(kind)[0](editor.model)
    row["memories"] = len(layer.thresholds()) if hasattr(layer, "thresholds") and callable(layer.thresholds) \
        else len(getattr(layer, "experts", []))
    return row


def write(out: str, result: dict[str, Any]) -> None:
    write_atomic(out + ".json", json.dumps(result, indent=1).encode("utf-8"))
    rows = result["rows"]
    lines = [f"Command: `{result['command']}` ({result['machine']}, torch {result['torch']}); {result['date']}", "",
             "| edits | memories | s/edit (median of block) | mean | memory kept | caches | inference overhead | "
             "quick Rel of the block |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['edits']} | {row['memories']} | {row['median_s']:.2f} | {row['mean_s']:.2f} | "
                     f"{row.get('memory_mb', 0):.1f} MB ({100 * row.get('memory_share', 0):.1f}%) | "
                     f"{row.get('cache_mb', 0):.1f} MB | {row['overhead']:.2f}x | {row['quick_rel_block']:.2f} |")
    if "quick_rel_final" in result:
        lines += ["", f"Quick Rel of all {result['done']} edits after the last one: {result['quick_rel_final']:.3f}"]
    if len(rows) > 1:
        first, final = rows[0]["median_s"], rows[-1]["median_s"]
        lines += [f"Median s/edit, last block over first block: {final / first:.2f}"]
    with open(out + ".md", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    figure = Figure(figsize=(12, 3), layout="constrained")
    FigureCanvasAgg(figure)
    edits = [row["edits"] for row in rows]
    for ax, (key, title) in zip(figure.subplots(1, 4), [("median_s", "s/edit (median of block)"),
                                                       ("memory_mb", "memory kept (MB)"),
                                                       ("overhead", "inference overhead (x)"),
                                                       ("quick_rel_block", "quick Rel of the block")]):
        ax.plot(edits, [row.get(key, 0) for row in rows], marker="o")
        ax.set_xlabel("edits")
        ax.set_title(title)
    figure.savefig(out + ".png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=os.path.join(ROOT, "hparams", "WISE", "smollm2-135m.yaml"))
    parser.add_argument("--dataset", choices=sorted(DATA), default="counterfact")
    parser.add_argument("--data", help="dataset file (default: the ../shared/data file of --dataset)")
    parser.add_argument("--n", type=int, default=1000, help="edits in the stream")
    parser.add_argument("--every", type=int, default=100, help="edits per measured block (and per checkpoint)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "scale"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("wise_plugin.wise").setLevel(logging.WARNING)  # one line per edit otherwise

    spec = load_spec(args.hparams)
    requests = load_requests(args.dataset, args.data or DATA[args.dataset])[:args.n]
    if len(requests) < args.n:
        parser.error(f"--n {args.n}: the data holds {len(requests)} records")
    requests = with_loc_prompts(requests, RunOptions(t_values=(args.n,), n=args.n))
    torch.manual_seed(0)
    editor = build_editor(spec)
    kind = plugin_kind(editor)
    if kind is None:
        parser.error("scale.py measures the plugin's editors (WISE, LEMoE)")
    _, _, save, load = editor_parts(kind)
    folder = args.out + "-checkpoint"
    result: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "hparams": os.path.relpath(args.hparams, ROOT),
                              "dataset": args.dataset, "n": args.n, "every": args.every, "torch": torch.__version__,
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "date": time.strftime("%Y-%m-%d"), "done": 0, "seconds": [], "rows": []}
    progress = os.path.join(folder, "progress.json")
    if os.path.isfile(progress):
        with open(progress, encoding="utf-8") as handle:
            saved = json.load(handle)
        load(editor.model, editor.hparams, os.path.join(folder, "editor"))
        result.update({k: saved[k] for k in ("done", "seconds", "rows")})
        logger.info("resuming after %d edits from %s", result["done"], folder)
    plain = PlainModels(lambda s: build_editor(s)).get(spec)
    setup_cache = SetupCache()
    bar = tqdm(total=args.n, initial=result["done"], unit="edit", desc="edits")
    for index in range(result["done"], args.n):
        result["seconds"].append(_edit(editor, requests[index], setup_cache))
        result["done"] = index + 1
        bar.update(1)
        if result["done"] % args.every == 0 or result["done"] == args.n:
            block = requests[result["done"] - args.every:result["done"]]
            result["rows"].append(measure(editor, kind, plain, block, result["done"], result["seconds"], args.every))
            bar.set_postfix_str(f"{result['rows'][-1]['median_s']:.1f} s/edit, "
                                f"Rel {result['rows'][-1]['quick_rel_block']:.2f}")
            write(args.out, result)
            if result["done"] < args.n:
                save(editor.model, editor.hparams, os.path.join(folder, "editor"))
                write_atomic(progress, json.dumps({k: result[k] for k in ("done", "seconds", "rows")}).encode())
    bar.close()
    editor.model.eval()
    result["quick_rel_final"] = statistics.mean(_quick_rel(editor, r) for r in tqdm(requests, desc="final Rel"))
    write(args.out, result)
    logger.info("wrote %s.json / .md / .png", args.out)


if __name__ == "__main__":
    main()
