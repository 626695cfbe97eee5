"""How often free generation repeats the new answer, read from the runner's ``results.json`` files.

    .venv/bin/python benchmarks/repeats.py docs/results/wise_dense_counterfact_t100_rank64.json \
        docs/results/wise_dense_counterfact_t100_answer_stop.json

The runner stores each edited prompt's 16-token greedy continuation after the chunk's edits
(``greedy``). An edit that holds in free generation says its answer; one that keeps pushing it
says it again and again ("Michelangelo Michelangelo Michelangelo"). For every editor of every file
this prints the share of records whose continuation contains the new answer (the runner's
"greedy contains target") and the share that contain it at least twice, as whole words. A second
mention can be fair ("Japan, ... a Japanese ... Japan"), so the second share has no right value;
it compares recipes on the same records.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from wise_plugin.evaluation import target_mentions


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per editor and T: records with a greedy continuation, shares naming the answer once or more and twice or more."""
    groups: dict[tuple[str, int], list[int]] = {}
    for record in records:
        if record.get("greedy") is None:
            continue
        groups.setdefault((record["editor"], record["T"]), []).append(target_mentions(record["greedy"], record["target_new"]))
    return [{"editor": editor, "T": t, "records": len(counts),
             "contains": sum(c >= 1 for c in counts) / len(counts), "repeats": sum(c >= 2 for c in counts) / len(counts)}
            for (editor, t), counts in sorted(groups.items())]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files written by wise-plugin compare")
    args = parser.parse_args(argv)
    print("| file | editor | T | records | greedy contains target | target twice or more |")
    print("|---|---|---|---|---|---|")
    for path in args.results:
        try:
            with open(path, encoding="utf-8") as handle:
                records = json.load(handle)["records"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"error: {path} is not a readable results.json with records ({error})", file=sys.stderr)
            return 2
        rows = summarize(records)
        if not rows:
            print(f"error: {path} holds no greedy continuations (run wise-plugin compare with generation scores)",
                  file=sys.stderr)
            return 2
        for row in rows:
            print(f"| {path} | {row['editor']} | {row['T']} | {row['records']} | {row['contains']:.2f} | {row['repeats']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
