"""Edit requests from the data formats of ../shared/data (and the built-in compare set).

ZsRE and CounterFact go through EasyEdit's own dataset classes (``ZsreDataset``,
``CounterFactDataset``) so the runner sees the records exactly as EasyEdit's scripts do; the
hallucination and temporal sets have no class in the package-index host and are read here. Every
record is checked for its keys before anything is edited, so a wrong file stops the run at once.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Optional, Sequence, Union

from wise_plugin.host import host_attr
from wise_plugin.runner.errors import RunnerInputError
from wise_plugin.runner.near_miss import as_paths, attach_near_miss, subjects_by_prompt

logger = logging.getLogger("wise_plugin")

BUILTIN = "builtin"
NO_GROUND_TRUTH = "<|endoftext|>"  # EasyEdit's default when a record has no ground truth


@dataclass(frozen=True)
class DatasetFormat:
    """What a dataset file must hold and how its records become EasyEdit request dicts."""

    name: str
    keys: tuple[str, ...]
    metrics: tuple[str, ...]  # columns of the paper table, in order
    eval_metric: str  # compute_edit_quality's eval_metric for the rewrite score
    example: str  # where such a file lives in ../shared/data


FORMATS: dict[str, DatasetFormat] = {
    "zsre": DatasetFormat("zsre", ("src", "alt", "answers", "rephrase", "loc", "loc_ans"),
                          ("rel", "gen", "loc", "avg"), "token_em", "wise/ZsRE/zsre_mend_edit.json"),
    "counterfact": DatasetFormat("counterfact", ("prompt", "target_new", "ground_truth", "rephrase_prompt",
                                                 "locality_prompt", "locality_ground_truth"),
                                 ("rel", "gen", "loc", "avg"), "token_em", "counterfact/counterfact-edit-1k.json"),
    "hallucination": DatasetFormat("hallucination", ("prompt", "target_new", "locality_prompt",
                                                     "locality_ground_truth"),
                                   ("ppl", "loc"), "ppl", "wise/hallucination/hallucination-edit.json"),
    "temporal": DatasetFormat("temporal", ("prompt", "target_new", "ood_rephrase", "locality_prompt",
                                           "locality_ground_truth"),
                              ("rel", "ood", "loc", "avg"), "token_em", "wise/temporal/temporal-edit.json"),
}
# The built-in set uses the CounterFact layout (written for this project, shipped in the package).
FORMATS[BUILTIN] = DatasetFormat(BUILTIN, FORMATS["counterfact"].keys, FORMATS["counterfact"].metrics, "token_em",
                                 "wise_plugin/data/compare_edits.json")


def dataset_format(name: str) -> DatasetFormat:
    """The format called ``name``, or an error listing the known names."""
    try:
        return FORMATS[name]
    except KeyError:
        raise RunnerInputError(
            f"unknown dataset {name!r}; use one of {', '.join(sorted(FORMATS))}."
        ) from None


def builtin_path() -> str:
    """Path of the built-in edit set (12 counterfactual edits written for this project)."""
    return str(resources.files("wise_plugin").joinpath("data", "compare_edits.json"))


def _read_records(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        raise RunnerInputError(f"dataset file not found: {path!r}. Pass --data with the path of a JSON file.")
    with open(path, encoding="utf-8") as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as error:
            raise RunnerInputError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise RunnerInputError(f"{path}: expected a JSON list of records (objects).")
    if not records:
        raise RunnerInputError(f"{path}: the file holds no records.")
    return records


def _guess_format(record: dict[str, Any]) -> Optional[str]:
    for name, fmt in FORMATS.items():
        if name != BUILTIN and all(key in record for key in fmt.keys):
            return name
    return None


def check_keys(records: list[dict[str, Any]], fmt: DatasetFormat, path: str) -> None:
    """Raise when any record lacks a key of ``fmt``, naming the record, the keys and a likely fix."""
    for index, record in enumerate(records):
        missing = [key for key in fmt.keys if key not in record]
        if missing:
            guess = _guess_format(record)
            hint = (f" The record looks like the {guess!r} format: pass --dataset {guess}." if guess
                    else f" A {fmt.name!r} record needs the keys {', '.join(fmt.keys)} "
                         f"(as in ../shared/data/{fmt.example}).")
            raise RunnerInputError(
                f"{path}: record {index} lacks the key(s) {', '.join(missing)} of the {fmt.name!r} format.{hint}"
            )


def _locality(prompt: str, answer: str) -> dict[str, Any]:
    return {"neighborhood": {"prompt": prompt, "ground_truth": answer}}


def _from_easyedit_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record of EasyEdit's ZsreDataset / CounterFactDataset as a BaseEditor request."""
    return {
        "prompt": record["prompt"],
        "target_new": record["target_new"],
        "ground_truth": record.get("ground_truth") or NO_GROUND_TRUTH,
        "rephrase_prompt": record["rephrase_prompt"],
        "locality": _locality(record["locality_prompt"], record["locality_ground_truth"]),
        "portability": {},
    }


def _zsre(path: str) -> list[dict[str, Any]]:
    ZsreDataset = host_attr("ZsreDataset")

    try:
        dataset = ZsreDataset(path)
    except AssertionError as error:  # ZsreDataset asserts its locality prompts start with "nq question: "
        raise RunnerInputError(f"{path}: EasyEdit's ZsreDataset rejects the file: {error}") from error
    return [_from_easyedit_record(r) for r in dataset]


def _counterfact(path: str) -> list[dict[str, Any]]:
    CounterFactDataset = host_attr("CounterFactDataset")

    return [_from_easyedit_record(r) for r in CounterFactDataset(path)]


def _hallucination(path: str) -> list[dict[str, Any]]:
    return [{
        "prompt": r["prompt"], "target_new": r["target_new"], "ground_truth": NO_GROUND_TRUTH,
        "locality": _locality(r["locality_prompt"], r["locality_ground_truth"]), "portability": {},
    } for r in _read_records(path)]


def _temporal(path: str) -> list[dict[str, Any]]:
    # The out-of-distribution prompt takes the rephrase slot, so compute_edit_quality's
    # rephrase score is the OOD score.
    return [{
        "prompt": r["prompt"], "target_new": r["target_new"], "ground_truth": NO_GROUND_TRUTH,
        "rephrase_prompt": r["ood_rephrase"],
        "locality": _locality(r["locality_prompt"], r["locality_ground_truth"]), "portability": {},
    } for r in _read_records(path)]


def _builtin(path: str) -> list[dict[str, Any]]:
    return [_from_easyedit_record(r) for r in _read_records(path)]


_LOADERS: dict[str, Callable[[str], list[dict[str, Any]]]] = {
    "zsre": _zsre, "counterfact": _counterfact, "hallucination": _hallucination, "temporal": _temporal,
    BUILTIN: _builtin,
}


def load_requests(name: str, path: Union[str, Sequence[str], None] = None,
                  near_miss_pool: Optional[str] = None) -> list[dict[str, Any]]:
    """Every edit request of the ``name`` dataset at ``path`` (the built-in set when ``path`` is None);
    several files are read in order as one stream (CounterFact T=3000: the edit file, then the train file).

    The files' keys are checked first; ZsreDataset skips records with an empty target, as in EasyEdit.
    Requests of ZsRE, CounterFact and the built-in set carry their ``near_miss`` prompts
    (:mod:`wise_plugin.runner.near_miss`), which the runner scores and never gives to an editor,
    and the record's ``subject`` where the file names one that occurs in the prompt (as
    ``BaseEditor.edit(..., subject=...)`` puts it in each request). ``near_miss_pool`` (a file of
    the same layout) supplies the subjects swapped into near misses instead of ``path``.
    """
    fmt = dataset_format(name)
    if path is None:
        if name != BUILTIN:
            raise RunnerInputError(f"--dataset {name} needs --data PATH, e.g. ../shared/data/{fmt.example}.")
        path = builtin_path()
    paths = as_paths(path)
    if not paths:
        raise RunnerInputError(f"--data names no file; give the path of a {name} JSON file.")
    for one in paths:
        check_keys(_read_records(one), fmt, one)
    if near_miss_pool is not None:
        if not os.path.isfile(near_miss_pool):
            raise RunnerInputError(f"--near-miss-pool {near_miss_pool!r} is not a file; give a {name} JSON file "
                                   f"whose subjects the stream does not edit, e.g. a train split.")
        check_keys(_read_records(near_miss_pool), fmt, near_miss_pool)
    requests = [request for one in paths for request in _LOADERS[name](one)]
    subjects = subjects_by_prompt(paths, name)
    for request in requests:
        subject = subjects.get(request["prompt"])
        if subject and subject in request["prompt"]:
            request["subject"] = subject
    for request, prompts in zip(requests, attach_near_miss(requests, name, paths, pool=near_miss_pool, subjects=subjects)):
        if prompts:
            request["near_miss"] = prompts
    logger.info("read %d %s edit requests from %s", len(requests), name, ", ".join(paths))
    return requests
