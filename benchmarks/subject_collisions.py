"""How many scores of a long stream fall to rows that name another edit's subject.

    .venv/bin/python benchmarks/subject_collisions.py results/dense_cf_t3000/results.json \
        --data ../shared/data/counterfact/counterfact-edit-1k.json ../shared/data/counterfact/counterfact-train-2k.json

Subject anchors (``subject_anchor``, ``anchor_route``) are matched over a whole row. Teacher-forced
scoring feeds prompt and answer as one row, so an edit whose new answer is itself an edited subject
(" Paris", " Venezuela") can be routed to that subject's memory, and a locality prompt or answer
naming an edited subject opens that subject's memory. Free generation routes on the prompt alone.
The more subjects a stream edits, the more rows name one, so this is the first thing to read when
Rel or Loc falls with T. For each editor and T of a runner ``results.json`` (or the
``scored.jsonl`` of a chunk still being scored) this prints Rel for edits whose new answer names
another edited subject and for the rest, and how many changed locality prompts name one.
Subjects are matched as whole words of the text (case-sensitive), an approximation of the
token-level anchor match.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from typing import Any, Sequence

from wise_plugin.runner.datasets import load_requests


def _load_records(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            return [{"editor": "?", "T": "?", **json.loads(line)} for line in handle if line.strip()]
        return json.load(handle)["records"]


def subject_pattern(subjects: Sequence[str]) -> re.Pattern[str]:
    """One pattern for all subjects, longest first, matched as whole words."""
    names = sorted({s.strip() for s in subjects if s and s.strip()}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b")


def summarize(records: Sequence[dict[str, Any]], requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per editor and T: Rel of edits whose answer names another edited subject and of the others,
    Rel misses among them, and changed locality prompts that name an edited subject."""
    pattern = subject_pattern([r.get("subject") or "" for r in requests])

    def names_other(text: str, own: str) -> bool:
        return any(found != own for found in pattern.findall(text))

    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["editor"], record["T"]), []).append(record)
    rows = []
    for (editor, t), group in sorted(groups.items(), key=lambda item: str(item[0])):
        colliding, other, loc_named, loc_changed = [], [], 0, 0
        for record in group:
            request = requests[record["index"]]
            own = (request.get("subject") or "").strip()
            (colliding if names_other(str(record["target_new"]), own) else other).append(record)
            if record.get("loc") is not None and record["loc"] < 1:  # only changed locality prompts are read
                loc = request.get("locality", {}) or {}
                loc_text = " ".join(str(v) for part in loc.values() if isinstance(part, dict)
                                    for v in (part.get("prompt"), part.get("ground_truth")))
                loc_changed += 1
                loc_named += names_other(loc_text, own)
        mean = lambda rs, key: statistics.mean(r[key] for r in rs) if rs else float("nan")  # noqa: E731
        rows.append({"editor": editor, "T": t, "records": len(group), "colliding": len(colliding),
                     "rel_colliding": mean(colliding, "rel"), "greedy_colliding": mean(colliding, "gen_rel"),
                     "rel_other": mean(other, "rel"), "misses": sum(r["rel"] < 1 for r in group),
                     "misses_colliding": sum(r["rel"] < 1 for r in colliding),
                     "loc_changed": loc_changed, "loc_changed_named": loc_named})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results.json written by wise-plugin compare, or a chunk's partial scored.jsonl")
    parser.add_argument("--data", nargs="+", required=True, help="the data files of the run, in its order")
    parser.add_argument("--dataset", default="counterfact", help="dataset kind of the data files (default counterfact)")
    args = parser.parse_args(argv)
    try:
        records = _load_records(args.results)
        requests = load_requests(args.dataset, args.data)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: cannot read {args.results} or the data files: {error}", file=sys.stderr)
        return 2
    if any(record["index"] >= len(requests) for record in records):
        print("error: the records index past the data files given; pass every --data file of the run, in its order",
              file=sys.stderr)
        return 2
    print("| editor | T | records | answer names another edited subject | their Rel | their greedy contains target "
          "| Rel of the others | Rel misses (of them naming one) | changed locality prompts (naming an edited subject) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in summarize(records, requests):
        print(f"| {row['editor']} | {row['T']} | {row['records']} | {row['colliding']} | {row['rel_colliding']:.2f} "
              f"| {row['greedy_colliding']:.2f} | {row['rel_other']:.2f} | {row['misses']} ({row['misses_colliding']}) "
              f"| {row['loc_changed']} ({row['loc_changed_named']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
