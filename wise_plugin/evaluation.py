"""Lifelong evaluation of a caller's ``BaseEditor`` and the generation-based scores.

The host editors score each edit right after making it; the lifelong number of the WISE paper
scores every edit after the last one, with locality measured against the unedited model. That
protocol has one home, :func:`wise_plugin.runner.protocol.score_stream`; ``lifelong_evaluate``
runs it through ``BaseEditor.edit`` for the examples and the demo. The greedy and WILD-style
answers, and the example scripts' shared options, live here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import string
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from wise_plugin.host import host_flavour, import_host

logger = logging.getLogger("wise_plugin")


def zsre_requests(path: str, count: Optional[int] = None, start: int = 0) -> list[dict[str, Any]]:
    """EasyEdit request dicts from a ZsRE file in the WISE layout (src/alt/rephrase/loc/loc_ans)."""
    with open(path, encoding="utf-8") as handle:
        records = json.load(handle)
    stop = None if count is None else start + count
    if count is not None and stop > len(records):
        raise ValueError(f"{path} holds {len(records)} records; asked for {count} from {start}.")
    requests = []
    for record in records[start:stop]:
        missing = [k for k in ("src", "alt", "rephrase", "loc", "loc_ans") if k not in record]
        if missing:
            raise ValueError(f"{path}: a record lacks the ZsRE key(s) {missing}.")
        requests.append({
            "prompt": record["src"],
            "target_new": record["alt"],
            "ground_truth": (record.get("answers") or ["<|endoftext|>"])[0],
            "rephrase_prompt": record["rephrase"],
            "subject": record.get("subject"),
            "locality": {"neighborhood": {"prompt": record["loc"], "ground_truth": record["loc_ans"]}},
            "portability": {},
        })
    from wise_plugin.runner.near_miss import attach_near_miss

    for request, prompts in zip(requests, attach_near_miss(requests, "zsre", path)):
        request["near_miss"] = prompts  # scored by the protocol, never given to the editor
    return requests


def edit_via_editor(editor: Any, requests: Sequence[dict[str, Any]]) -> None:
    """Send ``requests`` through ``BaseEditor.edit`` in order (one host call per request batch); on the
    source-repository host with ``sequential_edit=True``, its own switch for keeping edits. Subjects
    are passed when every request names one that occurs in its prompt."""
    sequential = {"sequential_edit": True} if host_flavour() == "source" else {}
    subjects = [r.get("subject") for r in requests]
    if all(isinstance(s, str) and s and s in r["prompt"] for s, r in zip(subjects, requests)):
        sequential["subject"] = subjects  # the host puts it in each request (subject anchors use it)
    editor.edit(
        prompts=[r["prompt"] for r in requests],
        target_new=[r["target_new"] for r in requests],
        ground_truth=[r["ground_truth"] for r in requests],
        rephrase_prompts=[r["rephrase_prompt"] for r in requests],
        locality_inputs={
            "neighborhood": {
                "prompt": [r["locality"]["neighborhood"]["prompt"] for r in requests],
                "ground_truth": [r["locality"]["neighborhood"]["ground_truth"] for r in requests],
            }
        },
        keep_original_weight=False,
        verbose=False,
        **sequential,
    )


def lifelong_evaluate(editor: Any, requests: Sequence[dict[str, Any]], edited_before: int = 0,
                      dataset: str = "zsre", generation: bool = True) -> dict[str, Any]:
    """The runner's lifelong protocol (:func:`wise_plugin.runner.protocol.score_stream`) on a
    ``BaseEditor`` the caller built: score ``requests``, edit them all through ``editor.edit``, then
    score all of them again.

    ``editor.hparams.lifelong`` must be true so the host does not undo each edit. With
    ``edited_before = k`` the first k requests are already in a checkpoint that the first edit
    call loads (``hparams.load_path``): only the rest are edited, all are scored. Returns the means
    (``rewrite_acc``, ``rephrase_acc``, ``locality``, ``greedy_acc``: greedy output contains the
    target, ``wild_rel``: WILD-style exact match; both skipped with ``generation=False``), the
    per-request records and the edit time.
    """
    from wise_plugin.runner.datasets import dataset_format
    from wise_plugin.runner.protocol import RunOptions, score_stream

    import_host()
    if not getattr(editor.hparams, "lifelong", False):
        raise ValueError("lifelong_evaluate needs hparams.lifelong = True, else the host undoes every edit.")
    if not 0 <= edited_before < len(requests):
        raise ValueError(f"edited_before must be in [0, {len(requests)}), got {edited_before}.")

    def apply(stream: Sequence[dict[str, Any]]) -> list[float]:
        start = time.perf_counter()
        edit_via_editor(editor, stream[edited_before:])
        return [time.perf_counter() - start]

    options = RunOptions(t_values=(len(requests),), progress=False)
    records, edit_seconds, _ = score_stream(editor, requests, dataset_format(dataset), options, apply, progress=True,
                                            generation=generation)
    mean = lambda key: float(np.mean([r[key] for r in records if r.get(key) is not None]))  # noqa: E731
    result = {"n": len(records), "rewrite_acc": mean("rel"), "rephrase_acc": mean("gen"), "locality": mean("loc"),
              "edit_seconds_per_edit": edit_seconds / (len(records) - edited_before), "records": records}
    if records and "gen_rel" in records[0]:
        result.update(greedy_acc=mean("gen_rel"), wild_rel=mean("wild_rel"))
    if any(r.get("near") is not None for r in records):
        result["near_miss"] = mean("near")
    return result


GENERATION_BATCH = 16  # prompts per ``generate`` call when many are answered (the runner's scoring)


def _stop_ids(model: Any, tok: Any) -> set[int]:
    """Token ids that end a row's generation: the model's end-of-sequence ids and the padding id
    that ``generate`` writes after a row has stopped."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.eos_token_id, _pad_id(tok)}
    return {int(i) for i in ids if i is not None}


def _pad_id(tok: Any) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _batches(prompts: Sequence[str], tok: Any, batch_size: int) -> list[list[int]]:
    """Indices of ``prompts`` in batches of similar token length (less padding); order restored by the caller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    order = sorted(range(len(prompts)), key=lambda i: len(tok(prompts[i])["input_ids"]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _generate(model: Any, tok: Any, prompts: Sequence[str], **kwargs: Any) -> list[list[int]]:
    """New tokens of each row of one left-padded ``generate`` call, padding included."""
    encoded = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left").to(
        next(model.parameters()).device)
    out = model.generate(**encoded, do_sample=False, pad_token_id=_pad_id(tok), **kwargs)
    return out[:, encoded["input_ids"].shape[1]:].tolist()


@torch.no_grad()
def greedy_ids_many(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int = 12,
                    batch_size: int = GENERATION_BATCH) -> list[list[int]]:
    """Token ids of the greedy continuation of each prompt (with the KV cache, as users generate),
    up to and including the first end-of-sequence token.

    Prompts are answered ``batch_size`` at a time, left padded: a row's padding is masked out of
    attention and out of the plugin's routing, so each row gets the tokens it gets alone (the
    runner's equality check is in docs/results.md), and faster on a CPU, where one row's
    decoding is bound by reading the weights."""
    stops = _stop_ids(model, tok)
    answers: list[list[int]] = [[] for _ in prompts]
    for batch in _batches(prompts, tok, batch_size):
        for i, row in zip(batch, _generate(model, tok, [prompts[i] for i in batch], max_new_tokens=max_new_tokens)):
            end = next((k + 1 for k, token in enumerate(row) if token in stops), len(row))
            answers[i] = row[:end]
    return answers


def greedy_ids(model: Any, tok: Any, prompt: str, max_new_tokens: int = 12) -> list[int]:
    """Token ids of the greedy continuation of ``prompt`` (:func:`greedy_ids_many`)."""
    return greedy_ids_many(model, tok, [prompt], max_new_tokens)[0]


def greedy_answers(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int = 12,
                   batch_size: int = GENERATION_BATCH) -> list[str]:
    """Greedy continuations of ``prompts`` as text (:func:`greedy_ids_many`)."""
    return [tok.decode(ids, skip_special_tokens=True).strip()
            for ids in greedy_ids_many(model, tok, prompts, max_new_tokens, batch_size)]


def greedy_answer(model: Any, tok: Any, prompt: str, max_new_tokens: int = 12) -> str:
    """Greedy continuation of ``prompt`` as text."""
    return greedy_answers(model, tok, [prompt], max_new_tokens)[0]


def target_mentions(generation: str, target: str) -> int:
    """How often ``target`` appears in ``generation`` as whole words (case-insensitive): "40" not in "4000"."""
    pattern = r"(?<!\w)" + re.escape(target.strip()) + r"(?!\w)"
    return len(re.findall(pattern, generation, flags=re.IGNORECASE))


def contains_target(generation: str, target: str) -> bool:
    """Whether ``target`` appears in ``generation`` as whole words (:func:`target_mentions`)."""
    return target_mentions(generation, target) > 0


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
WILD_STOPS = (".", "\n")  # with the tokenizer's end-of-sequence token: the natural stop of an answer
WILD_SLACK_TOKENS = 8  # generation budget past the target's own length; a longer answer is no exact match


def normalize_answer(text: str) -> str:
    """The exact-match normalisation of the WILD protocol (as in SQuAD): lower case, punctuation and
    articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


@torch.no_grad()
def wild_answers(model: Any, tok: Any, prompts: Sequence[str], targets: Sequence[str],
                 use_chat_template: bool = False, batch_size: int = GENERATION_BATCH) -> list[str]:
    """Greedy answer to each prompt that ends at a natural stop (".", newline, end of sequence), the
    way the WILD protocol generates: without the KV cache, stop strings matched on the text. Each
    answer is capped at its target's length plus :data:`WILD_SLACK_TOKENS` tokens.

    Prompts are answered ``batch_size`` at a time, left padded (as :func:`greedy_ids_many`); a row
    that stops early is padded by ``generate`` and cut back to its own stop and its own cap here,
    which gives the tokens it gets alone (greedy decoding does not look ahead)."""
    if len(prompts) != len(targets):
        raise ValueError(f"wild_answers: {len(prompts)} prompts but {len(targets)} targets.")
    if use_chat_template:
        prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                   for p in prompts]
    stops = [*WILD_STOPS, tok.eos_token] if tok.eos_token else list(WILD_STOPS)
    budgets = [len(tok(" " + target)["input_ids"]) + WILD_SLACK_TOKENS for target in targets]
    ends = _stop_ids(model, tok)
    answers = [""] * len(prompts)
    for batch in _batches(prompts, tok, batch_size):
        rows = _generate(model, tok, [prompts[i] for i in batch], max_new_tokens=max(budgets[i] for i in batch),
                         stop_strings=stops, tokenizer=tok, use_cache=False)
        for i, row in zip(batch, rows):
            answers[i] = _strip_stop(_until_stop(tok, row[:budgets[i]], stops, ends), stops)
    return answers


def _until_stop(tok: Any, row: Sequence[int], stops: Sequence[str], ends: set[int]) -> str:
    """Text of ``row`` up to the first token that completes a stop string or ends the sequence, where
    ``generate`` stops a row (stop strings may overhang the end of that token); what follows it in a
    batch is padding."""
    for k in range(1, len(row) + 1):
        text = tok.decode(row[:k], skip_special_tokens=False)
        if row[k - 1] in ends or any(stop and stop in text for stop in stops):
            return text
    return tok.decode(list(row), skip_special_tokens=False)


def _strip_stop(text: str, stops: Sequence[str]) -> str:
    for stop in stops:
        if stop and text.endswith(stop):
            text = text[:-len(stop)]
    return text.strip()


def wild_answer(model: Any, tok: Any, prompt: str, target: str, use_chat_template: bool = False) -> str:
    """WILD-style answer to one prompt (:func:`wild_answers`)."""
    return wild_answers(model, tok, [prompt], [target], use_chat_template)[0]


def wild_exact_match(answer: str, target: str) -> bool:
    """Whether a WILD answer equals the target after :func:`normalize_answer`."""
    return normalize_answer(answer) == normalize_answer(target)


# -- command-line helpers shared by the example scripts ------------------------------------------

def example_parser(description: str, hparams: str, data: str, out: str, n: int) -> argparse.ArgumentParser:
    """Options every lifelong example takes: hparams, data, sample, output, seed and ``--set`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--hparams", default=hparams)
    parser.add_argument("--data", default=data, help="ZsRE edit file (WISE layout)")
    parser.add_argument("--n", type=int, default=n, help="number of sequential edits T")
    parser.add_argument("--start", type=int, default=0, help="index of the first record")
    parser.add_argument("--out", default=out, help="results are written to <out>.json and <out>.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override an hparams value, e.g. --set edit_lr=1.5 (repeatable)")
    return parser


def apply_overrides(hparams: Any, items: Sequence[str], parser: argparse.ArgumentParser) -> None:
    """``KEY=JSON`` pairs onto ``hparams``, then the hparams' schema check; an unknown key, bad JSON
    or a value the schema rejects stops with a parser error naming it."""
    for item in items:
        key, _, value = item.partition("=")
        if not hasattr(hparams, key):
            parser.error(f"--set {item}: {key!r} is not a {type(hparams).__name__} key")
        try:
            setattr(hparams, key, json.loads(value))
        except json.JSONDecodeError:
            parser.error(f"--set {item}: {value!r} is not JSON (strings need quotes: {key}='\"text\"')")
    validate = getattr(hparams, "validate", None)
    if validate is not None:
        try:
            validate()  # the same schema as the YAML's
        except ValueError as error:
            parser.error(f"--set {' '.join(items)}: {error}")


def write_result(result: dict[str, Any], out: str, title: str, columns: dict[str, Any]) -> str:
    """Write ``<out>.json`` (everything, with the command and machine) and ``<out>.md`` (one table
    row of ``columns``); returns the table."""
    result.update(command=" ".join(sys.argv),
                  machine=f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    table = (f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
             f"| {' | '.join(cell(v) for v in columns.values())} |\n")
    with open(out + ".md", "w", encoding="utf-8") as handle:
        handle.write(f"# {title}\n\nCommand: `{result['command']}`\n\n{table}")
    return table
