"""Report files of a comparison: the paper-layout Markdown table, CSV and JSON records, a PNG plot.

The tables are built only from stored chunk lines, so a resumed run prints the same table as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any, Optional

from wise_plugin.runner.store import CHUNK_TAGS

logger = logging.getLogger("wise_plugin")

LABELS = {"rel": "Rel", "gen": "Gen", "ood": "OOD", "loc": "Loc", "avg": "Avg", "ppl": "PPL",
          "gen_rel": "greedy contains target", "wild_rel": "WILD-EM Rel", "wild_gen": "WILD-EM Gen",
          "near": "near-miss Loc"}
RECORD_FIELDS = ("editor", "T", "chunk", "index", "prompt", "target_new", "rel", "gen", "ood", "loc", "ppl",
                 "pre_rel", "pre_gen", "pre_ood", "pre_ppl", "gen_rel", "greedy", "wild_rel", "wild_rel_answer",
                 "wild_gen", "wild_gen_answer", "near", "edit_seconds")


def _fmt(value: Optional[float], metric: str) -> str:
    if value is None:
        return "-"
    if metric == "ppl":
        return f"{value:.2f}"
    text = f"{value:.2f}"
    return text[1:] if text.startswith("0.") else text  # the paper writes .57


def _row(result: dict[str, Any], editor: str, t: int) -> dict[str, Any]:
    return next(r for r in result["summary"] if r["editor"] == editor and r["T"] == t)


def paper_table(result: dict[str, Any]) -> str:
    """Rows editors, columns T, cells ``Rel/Gen/Loc/Avg`` (or ``PPL/Loc``, ``Rel/OOD/Loc/Avg``)."""
    metrics = result["metrics"]
    ts = result["t_values"]
    lines = [f"| method ({'/'.join(LABELS[m] for m in metrics)}) | " + " | ".join(f"T={t}" for t in ts) + " |",
             "|---|" + "---|" * len(ts)]
    for editor in result["editors"]:
        rows = [_row(result, editor, t) for t in ts]
        cells = ["/".join(_fmt(row[m], m) for m in metrics) + _progress(row) for row in rows]
        lines.append(f"| {editor} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _unfinished(row: dict[str, Any]) -> bool:
    """An editor and T with chunks still to run (a stored-only report)."""
    return row.get("planned_chunks") is not None and row["chunks"] < row["planned_chunks"]


def _progress(row: dict[str, Any]) -> str:
    """`` (3 of 10 chunks)`` for an unfinished editor and T, else ``""``."""
    return f" ({row['chunks']} of {row['planned_chunks']} chunks)" if _unfinished(row) else ""


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def detail_table(result: dict[str, Any]) -> str:
    """Generation-based scores (greedy contains target; WILD exact match on the edit and rephrase
    prompts; near-miss prompts whose greedy continuation is unchanged) and cost per editor and T: seconds,
    and after the chunk's last edit the memory the editor keeps (MB and share of the model's parameter
    bytes) and the inference overhead against the unedited model."""
    lines = ["| method | T | chunks | edits | greedy contains target | WILD-EM Rel | WILD-EM Gen | near-miss Loc "
             "| edit s/edit | eval s/edit | memory kept | inference overhead |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["summary"]:
        chunks = f"{row['chunks']} of {row['planned_chunks']}" if _unfinished(row) else row["chunks"]
        lines.append(f"| {row['editor']} | {row['T']} | {chunks} | {row['edits']} | "
                     f"{_fmt(row['gen_rel'], 'gen_rel')} | {_fmt(row.get('wild_rel'), 'wild_rel')} | "
                     f"{_fmt(row.get('wild_gen'), 'wild_gen')} | {_fmt(row.get('near'), 'near')} | "
                     f"{_seconds(row['edit_s_per_edit'])} | "
                     f"{_seconds(row['eval_s_per_edit'])} | {_memory(row)} | "
                     f"{'-' if row.get('overhead') is None else format(row['overhead'], '.2f') + 'x'} |")
    return "\n".join(lines) + "\n"


def _memory(row: dict[str, Any]) -> str:
    if row.get("memory_mb") is None:
        return "-"
    return f"{row['memory_mb']:.1f} MB ({100 * row['memory_share']:.1f}%)"


def records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every per-edit record, tagged with its editor, T and chunk."""
    return [{**{tag: line[tag] for tag in CHUNK_TAGS}, **record}
            for line in result["chunks"] for record in line["records"]]


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """The whole Markdown report: what was run, the paper table, then greedy reliability and cost."""
    head = [f"# Lifelong editing: {result['dataset']}, {result['n']} requests from index {result['start']}", ""]
    for key in ("command", "data", "model", "machine"):
        if meta.get(key):
            head.append(f"- {key}: `{meta[key]}`")
    head += [f"- seed: {result['seed']}; chunks of T edits each start from the unedited model; scores are read "
             "after the chunk's last edit (teacher-forced, EasyEdit's compute_edit_quality) and averaged over chunks",
             ""]
    return "\n".join(head) + "\n" + paper_table(result) + "\n" + detail_table(result)


# costs at the end of each chunk, drawn beside the scores: summary field -> (panel title, scale shown)
COST_PANELS = {"edit_s_per_edit": ("edit s/edit", 1.0), "memory_share": ("memory kept (% of model)", 100.0),
               "overhead": ("inference overhead (x)", 1.0)}


def plot_panels(result: dict[str, Any]) -> list[str]:
    """Summary fields that get a panel: the dataset's scores, the generation-based scores and the
    costs, each only where some row has a value (FT-L keeps no memory, short chunks are not timed)."""
    fields = list(result["metrics"]) + ["gen_rel", "wild_rel", "near"] + list(COST_PANELS)
    return [f for f in fields if any(row.get(f) is not None for row in result["summary"])]


def plot(result: dict[str, Any], path: str) -> Optional[str]:
    """One panel per metric and cost against T (log axis), a line per editor; None when matplotlib
    is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed; no plot written (pip install matplotlib)")
        return None
    panels = plot_panels(result)
    columns = min(len(panels), 5)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas, without pyplot's global state
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for ax, field in zip(axes, panels):
        title, scale = COST_PANELS.get(field, (LABELS.get(field), 1.0))
        for number, editor in enumerate(result["editors"]):
            color = f"C{number}"  # one colour per editor in every panel
            summary_rows = [_row(result, editor, t) for t in result["t_values"]]
            points = [(row["T"], row[field] * scale, _unfinished(row))
                      for row in summary_rows if row[field] is not None]
            if points:
                ax.plot([t for t, _, _ in points], [v for _, v, _ in points], marker="o", color=color, label=editor)
                unfinished = [(t, v) for t, v, partial in points if partial]
                if unfinished:  # a stored-only report: means over the chunks done so far
                    ax.plot([t for t, _ in unfinished], [v for _, v in unfinished], linestyle="none", marker="o",
                            markerfacecolor="white", markeredgecolor=color)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(result["t_values"], [str(t) for t in result["t_values"]])
        ax.set_xlabel("T (edits before scoring)")
        ax.set_title(title)
        if field not in COST_PANELS and field != "ppl":
            ax.set_ylim(-0.03, 1.03)
        elif field != "overhead":
            ax.set_ylim(bottom=0)  # seconds and memory from zero, so that the panels do not exaggerate growth
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend()
    if any(_unfinished(row) for row in result["summary"] if row["chunks"]):
        figure.suptitle("hollow markers: editor and T with chunks still to run (mean of the chunks done)")
    figure.savefig(path, dpi=120)
    return path


def write_reports(result: dict[str, Any], out_dir: str, meta: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """Write results.md, summary.csv, records.csv, results.json and metrics.png into ``out_dir``."""
    meta = meta or {}
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name)
             for name in ("results.md", "summary.csv", "records.csv", "results.json", "metrics.png")}
    with open(paths["results.md"], "w", encoding="utf-8") as handle:
        handle.write(markdown(result, meta))
    with open(paths["summary.csv"], "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(result["summary"][0]))
        writer.writeheader()
        writer.writerows(result["summary"])
    with open(paths["records.csv"], "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records(result))
    with open(paths["results.json"], "w", encoding="utf-8") as handle:
        # each chunk's key, costs and seconds without its records, so that --import-results can
        # join them again (wise_plugin.runner.store.chunk_lines_of)
        chunks = [{k: v for k, v in line.items() if k != "records"} for line in result["chunks"]]
        json.dump({**{k: v for k, v in result.items() if k != "chunks"}, "meta": meta, "chunks": chunks,
                   "records": records(result)}, handle, indent=1)
    if plot(result, paths["metrics.png"]) is None:
        del paths["metrics.png"]
    return paths
