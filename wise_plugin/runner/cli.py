"""The lifelong benchmark of several editors from the command line (`wise-plugin compare`).

With no options it compares WISE, LEMoE and FT-L on the embedded SmolLM2 over the built-in edit
set (a few minutes on a laptop CPU) and prints how to point it at real data. On a
source-repository EasyEdit (``wise-plugin compare --easyedit PATH``) the host's own editors can
join, e.g. its WISE as ``hparams/WISE-upstream/smollm2-135m.yaml`` and ``hparams/GRACE/smollm2-135m.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shlex
import shutil
from typing import Any, Sequence

from wise_plugin.evaluation import GENERATION_BATCH

DEFAULT_HPARAMS = ("WISE/smollm2-135m", "LEMoE/smollm2-135m", "FT/smollm2-135m")  # shipped recipes, by name
DEFAULT_T = (1, 6)
BUILTIN_N = 6  # with DEFAULT_T: 24 edits in all; WISE pays its per-model setup in each T=1 chunk
DEFAULT_OUT = os.path.join("results", "compare")
REAL_DATA_HINT = """\
To run on real data (ZsRE in the WISE layout, the paper's T=1,10,100), e.g.:
  wise-plugin compare --hparams hparams/WISE/smollm2-135m.yaml hparams/FT/smollm2-135m.yaml \\
      --dataset zsre --data ../shared/data/wise/ZsRE/zsre_mend_edit.json --T 1 10 100 --n 100 \\
      --out results/compare_zsre
Other datasets: --dataset counterfact|hallucination|temporal with their JSON file as --data.
An interrupted run resumes where it stopped when rerun with the same --out."""

logger = logging.getLogger("wise_plugin")


def add_arguments(compare: argparse.ArgumentParser) -> None:
    """The options of ``wise-plugin compare``."""
    compare.add_argument("--hparams", nargs="+", default=list(DEFAULT_HPARAMS), metavar="YAML",
                         help="one hparams YAML (a path, or a shipped recipe's name such as WISE/smollm2-135m) per "
                              "editor, all for the same model (default: WISE, LEMoE and FT-L on the embedded SmolLM2)")
    compare.add_argument("--dataset", default=None,
                         help="zsre, counterfact, hallucination, temporal or builtin (default: builtin, "
                              "or zsre when --data is given)")
    compare.add_argument("--data", nargs="+", default=None, metavar="JSON",
                         help="dataset JSON file, or several edited in the given order as one stream "
                              "(e.g. counterfact-edit-1k.json counterfact-train-2k.json for T=3000; "
                              "default: the built-in edit set)")
    compare.add_argument("--T", dest="t_values", nargs="+", type=int, default=list(DEFAULT_T), metavar="T",
                         help="edits per chunk before scoring (default: %(default)s)")
    compare.add_argument("--n", type=int, default=None,
                         help=f"sample size: requests used (default: all; {BUILTIN_N} of the built-in set)")
    compare.add_argument("--start", type=int, default=0, help="index of the first request (default: 0)")
    compare.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--eval-target-tokens", type=int, default=40,
                         help="teacher-forced scoring reads at most this many tokens after each prompt, "
                              "the same for all editors (default: %(default)s)")
    compare.add_argument("--loc-prompts", default="builtin", metavar="JSON",
                         help="irrelevant texts, one drawn into each request as its loc_prompt (the source host's "
                              "WISE needs one): 'builtin' (default) or a JSON list of strings / ZsRE / CounterFact "
                              "records, e.g. the ZsRE train file")
    compare.add_argument("--near-miss-pool", default=None, metavar="JSON",
                         help="a file of the dataset's layout whose subjects are swapped into near-miss prompts "
                              "instead of the edit file's own (e.g. the ZsRE train file); with a stream over the "
                              "whole edit file, the file's own subjects are all edited (default: the edit file)")
    compare.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                         help="save WISE/LEMoE progress inside a chunk every K edits, so that rerunning the command "
                              "after an interruption continues the chunk (default: chunks start over)")
    compare.add_argument("--score-batch", type=int, default=GENERATION_BATCH, metavar="B",
                         help="requests scored together; their greedy and WILD generations run as left-padded "
                              f"batches, each row getting the tokens it gets alone (default: {GENERATION_BATCH}; 1 "
                              "scores one request at a time)")
    compare.add_argument("--import-results", nargs="+", default=(), metavar="JSON",
                         help="results.json files of earlier runs (e.g. docs/results/*.json or a run on another "
                              "machine): their chunks whose editor config, model, data and scoring settings match "
                              "this run's are taken instead of run again")
    compare.add_argument("--stored-only", action="store_true",
                         help="run no chunk: write the reports from the chunks already stored in --out or imported, "
                              "each editor and T marked with its chunks done (the progress of a long sweep)")
    compare.add_argument("--fresh", action="store_true", help="discard stored chunks and unedited-model scores in --out instead of resuming")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar")


def _machine() -> str:
    import torch

    cpu = " ".join(part for part in (platform.machine(), platform.processor()) if part)
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Check every input, run or resume the comparison, write the reports, print the table."""
    from wise_plugin.runner.baseline import BASELINE_FILE
    from wise_plugin.runner.datasets import BUILTIN, dataset_format, load_requests
    from wise_plugin.runner.editors import load_specs
    from wise_plugin.runner.errors import RunnerInputError
    from wise_plugin.runner.partial import PARTIAL_DIR
    from wise_plugin.runner.protocol import RunOptions, run_comparison, select_sample
    from wise_plugin.runner.store import RESULTS_FILE, chunk_lines_of
    from wise_plugin.runner.report import detail_table, paper_table, write_reports

    name = args.dataset or (BUILTIN if args.data is None else "zsre")
    fmt = dataset_format(name)
    specs = load_specs(args.hparams)
    requests = load_requests(name, args.data, args.near_miss_pool)
    n = BUILTIN_N if args.n is None and args.data is None else args.n
    options = RunOptions(t_values=tuple(args.t_values), n=n, start=args.start, seed=args.seed,
                         eval_target_tokens=args.eval_target_tokens, progress=not args.no_progress,
                         loc_prompts=args.loc_prompts, checkpoint_every=args.checkpoint_every,
                         score_batch=args.score_batch)
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise RunnerInputError(f"--checkpoint-every {args.checkpoint_every}: give a number of edits >= 1.")
    if args.score_batch < 1:
        raise RunnerInputError(f"--score-batch {args.score_batch}: give a number of requests >= 1.")
    select_sample(requests, options)  # bad T or --n stop here, before --fresh discards anything
    for path in args.import_results:  # as do unreadable --import-results files
        chunk_lines_of(path)
    if args.fresh and args.stored_only:
        raise RunnerInputError("--fresh discards the stored chunks that --stored-only reports; give one of them.")
    stored = os.path.join(args.out, RESULTS_FILE)
    if args.fresh and os.path.exists(stored):
        os.remove(stored)
    if args.fresh:
        shutil.rmtree(os.path.join(args.out, PARTIAL_DIR), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.out, BASELINE_FILE))
    result = run_comparison(specs, requests, fmt, options, args.out, imports=args.import_results,
                            stored_only=args.stored_only)
    meta = {"command": "wise-plugin " + shlex.join(argv), "data": ", ".join(args.data) if args.data else "built-in compare_edits.json",
            "model": specs[0].model_name, "machine": _machine()}
    paths = write_reports(result, args.out, meta)
    print(f"\n{paper_table(result)}\n{detail_table(result)}")
    print("written: " + ", ".join(sorted(paths.values())))
    if args.data is None:
        print("\n" + REAL_DATA_HINT)
    return result
