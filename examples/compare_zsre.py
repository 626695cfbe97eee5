"""The WISE paper's ZsRE table (Rel/Gen/Loc/Avg, T=1, 10, 100) for WISE and FT-L on SmolLM2.

Example:
    python examples/compare_zsre.py                      # 100 ZsRE requests, T = 1, 10, 100
    python examples/compare_zsre.py --n 20 --T 1 10      # a shorter run
    python examples/compare_zsre.py --out results/zsre   # any `wise-plugin compare` option passes through

Reads ../shared/data/wise/ZsRE/zsre_mend_edit.json (never copied into this repository) and writes
results.md (the paper's layout: rows editors, columns T), summary.csv, records.csv, results.json
and metrics.png into --out. Each T uses every request once, in chunks of T edits on a fresh model,
so 100 requests and three T values make 300 edits per editor. Interrupted runs resume when rerun
with the same --out.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from wise_plugin import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ZSRE = os.path.join(os.path.dirname(ROOT), "shared", "data", "wise", "ZsRE", "zsre_mend_edit.json")
DEFAULTS = {
    "--hparams": [os.path.join(ROOT, "hparams", "WISE", "smollm2-135m.yaml"),
                  os.path.join(ROOT, "hparams", "FT", "smollm2-135m.yaml")],
    "--dataset": ["zsre"],
    "--data": [ZSRE],
    "--T": ["1", "10", "100"],
    "--n": ["100"],
    "--out": [os.path.join(ROOT, "results", "compare_zsre")],
}


def arguments(argv: Sequence[str]) -> list[str]:
    """``compare`` arguments: the paper's ZsRE settings, each replaced by the same option in ``argv``."""
    given = set(a.split("=")[0] for a in argv if a.startswith("--"))
    args = ["compare"]
    for option, values in DEFAULTS.items():
        if option not in given:
            args += [option, *values]
    return args + list(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main(arguments(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
