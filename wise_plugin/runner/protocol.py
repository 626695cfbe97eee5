"""The lifelong protocol of the WISE paper, for several editors and several T, resumable.

For every editor and every T the sample is cut into chunks of T requests. Each chunk starts from a
freshly built host ``BaseEditor`` (the model as stored: earlier chunks are rolled back), applies
its T requests one after the other with the editor's ALG_DICT function (called as
``BaseEditor.edit`` calls it), and only then scores all T with EasyEdit's ``compute_edit_quality``
(locality: agreement with the unedited model's tokens). Scores are averaged over chunks. Each
finished chunk is appended as one JSON line, so a rerun skips what is done and rebuilds the same
table from the stored lines.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import gc
import hashlib
import inspect
import io
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from wise_plugin.core.requests import DEFAULT_MAX_REQUEST_TOKENS, EditRequestError, check_lengths
from wise_plugin.evaluation import GENERATION_BATCH, contains_target, greedy_answers, greedy_ids_many, wild_answers, wild_exact_match
from wise_plugin.host import compute_edit_quality
from wise_plugin.runner.cost import OVERHEAD_MIN_T, PlainModels, inference_overhead, memory_kept, overhead_prompts
from wise_plugin.runner.datasets import DatasetFormat
from wise_plugin.runner.editors import EditorSpec, ModelFactory, build_editor
from wise_plugin.host.guard import editor_parts, plugin_kind
from wise_plugin.runner.errors import RunnerInputError
from wise_plugin.runner.baseline import BaselineScores, scoring_profile
from wise_plugin.runner.near_miss import counted, near_miss_fields, stream_prompts, without_stream_prompts
from wise_plugin.runner.partial import PartialChunk
from wise_plugin.runner.store import ResultStore, import_results
from wise_plugin.wise.caches import SetupCache

logger = logging.getLogger("wise_plugin")

WILD_VERSION = 1  # enters the chunk key: chunks stored before the WILD score are recomputed
NEAR_MISS_VERSION = 2  # enters the chunk key: 2 leaves out near misses that are prompts of the stream
METRICS = ("rel", "gen", "ood", "loc", "avg", "ppl", "gen_rel", "wild_rel", "wild_gen", "near")
# short targets: "greedy output contains it" and the WILD exact match are meaningful
GREEDY_FORMATS = ("zsre", "counterfact", "builtin")


@dataclass(frozen=True)
class RunOptions:
    """Settings of one comparison; all but ``progress``, ``checkpoint_every`` and ``score_batch`` enter
    the fingerprint of each stored chunk (batched generation gives each row the tokens it gets alone)."""

    t_values: tuple[int, ...]
    n: Optional[int] = None  # sample size; None takes every request from ``start``
    start: int = 0
    seed: int = 0
    eval_target_tokens: int = 40  # teacher-forced scoring reads at most this many tokens after the prompt
    greedy_tokens: int = 16
    near_miss_tokens: int = 8  # greedy tokens compared before and after the edits for each near-miss prompt
    ppl_clip: float = 100.0  # the WISE paper clips hallucination perplexity at 100
    # irrelevant texts for each request's ``loc_prompt`` (the source host's WISE needs one): the
    # plugin's built-in pool, or a JSON file of strings / ZsRE / CounterFact records
    loc_prompts: str = "builtin"
    progress: bool = True
    checkpoint_every: Optional[int] = None  # save a plugin editor's progress inside a chunk every k edits
    score_batch: int = GENERATION_BATCH  # requests scored together: their greedy and WILD generations share batches


@dataclass(frozen=True)
class Chunk:
    """Requests ``[start, stop)`` of the sample, edited together for one T."""

    t: int
    index: int
    start: int
    stop: int


def select_sample(requests: Sequence[dict[str, Any]], options: RunOptions) -> list[dict[str, Any]]:
    """The ``n`` requests from ``start``, checked against the data and every T (before any edit)."""
    if options.start < 0 or options.start >= len(requests):
        raise RunnerInputError(f"--start {options.start} is outside the data ({len(requests)} requests).")
    available = len(requests) - options.start
    n = available if options.n is None else options.n
    if n < 1 or n > available:
        raise RunnerInputError(
            f"sample size {n} is larger than the data: {available} requests from index {options.start}. "
            f"Use --n {available} or less."
        )
    if not options.t_values:
        raise RunnerInputError("no T value given; pass e.g. --T 1 10 100.")
    for t in options.t_values:
        if t < 1:
            raise RunnerInputError(f"T={t}: every T must be at least 1.")
        if t > n:
            hint = f"raise --n to {t} or more" if t <= available else f"use a T of at most {available}"
            raise RunnerInputError(f"T={t} is larger than the data: the sample holds {n} requests; {hint}.")
        if n % t:
            logger.warning("T=%d: %d of the %d requests do not fill a chunk and are left out", t, n % t, n)
    return list(requests[options.start:options.start + n])


def with_loc_prompts(requests: Sequence[dict[str, Any]], options: RunOptions) -> list[dict[str, Any]]:
    """The requests, each with a ``loc_prompt`` (kept when it has one): an irrelevant text drawn,
    seeded, from ``options.loc_prompts``, as the source-repository EasyEdit's ``loc_prompts``
    argument puts it there. Its WISE needs one per request; ours uses it as one more irrelevant row."""
    from wise_plugin.core.rows import load_loc_pool

    pool = load_loc_pool(options.loc_prompts)
    draw = random.Random(options.seed)
    return [dict(r) if r.get("loc_prompt") else {**r, "loc_prompt": draw.choice(pool)} for r in requests]


def plan(n: int, t_values: Iterable[int]) -> list[Chunk]:
    """Chunks of every T over a sample of ``n`` requests, in run order."""
    return [Chunk(t, i, i * t, (i + 1) * t) for t in t_values for i in range(n // t)]


def chunk_key(spec: EditorSpec, fmt: DatasetFormat, chunk: Chunk, requests: Sequence[dict[str, Any]],
              options: RunOptions, near_miss_version: Optional[int] = NEAR_MISS_VERSION) -> str:
    """Identity of a chunk's result: editor config, model, data content and scoring settings.
    ``near_miss_version=None`` gives the key of chunks stored before near misses had versions."""
    fields = {
        "hparams": spec.fingerprint, "model": spec.model_name, "dataset": fmt.name,
        "requests": list(requests), "seed": options.seed, "eval_target_tokens": options.eval_target_tokens,
        "greedy_tokens": options.greedy_tokens, "ppl_clip": options.ppl_clip, "wild": WILD_VERSION,
        "near_miss_tokens": options.near_miss_tokens,
    }
    if near_miss_version is not None:
        fields["near_miss_version"] = near_miss_version
    content = json.dumps(fields, sort_keys=True, default=str)
    digest = hashlib.sha256(content.encode()).hexdigest()[:16]
    return f"{spec.label}|T={chunk.t}|chunk={chunk.index}|{digest}"


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _score(editor: Any, request: dict[str, Any], eval_metric: str, target_tokens: int) -> dict[str, Any]:
    """compute_edit_quality with a token budget that always keeps the whole prompt.

    The host truncates prompt + target to ``hparams.max_length`` and fails when a prompt alone
    fills it (hallucination passages do); here the budget is the longest prompt of the request
    plus ``target_tokens``, the same for every editor.
    """

    prompts = [request["prompt"], request.get("rephrase_prompt") or ""]
    prompts += [value["prompt"] for value in request.get("locality", {}).values()]
    hparams = copy.copy(editor.hparams)
    hparams.max_length = max(len(editor.tok(p)["input_ids"]) for p in prompts) + target_tokens
    with torch.no_grad():
        return compute_edit_quality(editor.model, editor.model_name, hparams, editor.tok, request,
                                    editor.hparams.device, eval_metric=eval_metric)


def _mean(values: Any) -> Optional[float]:
    values = [v for v in np.ravel(np.asarray(values, dtype=float)) if not np.isnan(v)]
    return float(np.mean(values)) if values else None


def _edit(editor: Any, request: dict[str, Any], setup_cache: Optional[SetupCache] = None) -> float:
    """Apply one request as ``BaseEditor.edit`` does (same apply function and arguments); returns seconds.

    ``BaseEditor.edit`` itself is not called: it scores every edit before and after it (two extra
    scorings per edit, which the protocol does not use) with the editor's own ``max_length``, and
    that scoring fails on prompts longer than ``max_length`` (hallucination passages).
    ``keep_original_weight=False`` makes the host's editors (FT) return no weights to
    restore, and ``hparams.lifelong`` keeps the plugin's edits, so the edits accumulate. Editors
    that take a ``setup_cache`` (the plugin's WISE) get the comparison's, so each fresh model of
    the same weights reuses the once-per-model setup.
    """
    request = {k: v for k, v in request.items() if k != "near_miss"}  # evaluation only: never shown to an editor
    chatter = io.StringIO()  # the host's editors print every optimisation step
    extra = {"setup_cache": setup_cache} if setup_cache is not None and _takes(editor.apply_algo, "setup_cache") else {}
    start = time.perf_counter()
    with contextlib.redirect_stdout(chatter):
        editor.apply_algo(editor.model, editor.tok, [request], editor.hparams, copy=False,
                          return_orig_weights=True, keep_original_weight=False, train_ds=None, **extra)
    seconds = time.perf_counter() - start
    logger.debug("%s edit output:\n%s", editor.alg_name, chatter.getvalue())
    return seconds


def _takes(function: Any, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _record(request: dict[str, Any], index: int, fmt: DatasetFormat, before: dict[str, Any],
            after: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    locality = [
        float(np.mean(np.equal(post, pre)))
        for key in request.get("locality", {})
        for post, pre in zip(after["locality"][f"{key}_output"], before["locality"][f"{key}_output"])
    ]
    record: dict[str, Any] = {"index": index, "prompt": request["prompt"], "target_new": request["target_new"],
                              "loc": _mean(locality) if locality else None}
    if fmt.eval_metric == "ppl":
        record["ppl"] = min(float(np.mean(after["rewrite_ppl"])), options.ppl_clip)
        record["pre_ppl"] = min(float(np.mean(before["rewrite_ppl"])), options.ppl_clip)
    else:
        record["rel"] = _mean(after["rewrite_acc"])
        record["pre_rel"] = _mean(before["rewrite_acc"])
        second = "ood" if "ood" in fmt.metrics else "gen"
        record[second] = _mean(after["rephrase_acc"]) if "rephrase_acc" in after else None
        record[f"pre_{second}"] = _mean(before["rephrase_acc"]) if "rephrase_acc" in before else None
    return record


def _near_miss_of(editor: Any, prompt_lists: Sequence[Sequence[str]], tokens: int) -> list[list[list[int]]]:
    """Greedy continuations of the near-miss prompts of several requests (see
    :mod:`wise_plugin.runner.near_miss`), generated in batches and split back per request."""
    flat = greedy_ids_many(editor.model, editor.tok, [p for prompts in prompt_lists for p in prompts], tokens)
    out, at = [], 0
    for prompts in prompt_lists:
        out.append(flat[at:at + len(prompts)])
        at += len(prompts)
    return out


def _near_miss_answers(editor: Any, prompts: Sequence[str], tokens: int) -> list[list[int]]:
    """Greedy continuations of one request's near-miss prompts."""
    return _near_miss_of(editor, [prompts], tokens)[0]


def _wild(editor: Any, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """WILD-style answers to the edit and rephrase prompts of ``requests`` (natural stop, no KV
    cache) and their normalised exact match against the target, one dict per request."""
    chat = bool(getattr(editor.hparams, "use_chat_template", False))
    jobs = [(row, key, request[prompt_key]) for row, request in enumerate(requests)
            for key, prompt_key in (("rel", "prompt"), ("gen", "rephrase_prompt")) if request.get(prompt_key)]
    answers = wild_answers(editor.model, editor.tok, [prompt for _, _, prompt in jobs],
                           [requests[row]["target_new"] for row, _, _ in jobs], chat)
    out: list[dict[str, Any]] = [{} for _ in requests]
    for (row, key, _), answer in zip(jobs, answers):
        out[row][f"wild_{key}_answer"] = answer
        out[row][f"wild_{key}"] = float(wild_exact_match(answer, requests[row]["target_new"]))
    return out


def _score_block(editor: Any, items: Sequence[tuple[dict[str, Any], int, dict[str, Any], list[list[int]]]],
                 fmt: DatasetFormat, options: RunOptions, edited: set[str], generation: bool) -> list[dict[str, Any]]:
    """Records of requests scored on the edited model, ``items`` being (request, index, unedited
    scores, unedited near-miss answers): the host's scores against the unedited ones, with
    ``generation`` the greedy and WILD-style answers (short targets), and near-miss locality over
    the request's near-miss prompts that are not prompts of the stream (``edited``). Generation runs
    batched over the block (:func:`wise_plugin.evaluation.greedy_ids_many`)."""
    requests = [request for request, _, _, _ in items]
    records = [_record(request, index, fmt, before, _score(editor, request, fmt.eval_metric, options.eval_target_tokens),
                       options) for request, index, before, _ in items]
    if generation and fmt.name in GREEDY_FORMATS:
        greedy = greedy_answers(editor.model, editor.tok, [r["prompt"] for r in requests], options.greedy_tokens)
        for record, request, answer, wild in zip(records, requests, greedy, _wild(editor, requests)):
            record["greedy"] = answer
            record["gen_rel"] = float(contains_target(answer, request["target_new"]))
            record.update(wild)
    kept = [counted(request.get("near_miss", []), edited) for request in requests]
    after = _near_miss_of(editor, kept, options.near_miss_tokens)
    for record, (request, _, _, near_before), prompts_kept, answers in zip(records, items, kept, after):
        prompts = request.get("near_miss", [])
        before_of = dict(zip(prompts, near_before))
        changed = {prompt for prompt, answer in zip(prompts_kept, answers) if answer != before_of[prompt]}
        record.update(near_miss_fields(prompts, changed, edited))
    return records


def _blocks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start:start + size] for start in range(0, len(items), max(size, 1))]


def score_stream(editor: Any, requests: Sequence[dict[str, Any]], fmt: DatasetFormat, options: RunOptions,
                 apply: Callable[[Sequence[dict[str, Any]]], Sequence[float]], first_index: int = 0,
                 progress: bool = False, generation: bool = True,
                 partial: Optional[PartialChunk] = None,
                 baseline: Optional[BaselineScores] = None) -> tuple[list[dict[str, Any]], float, float]:
    """The lifelong protocol on one stream: score every request on the unedited model, ``apply``
    them all (it returns edit seconds, one per request or one in all), then score every request
    again; locality is agreement with the unedited model's tokens, near-miss locality the share of a
    request's ``near_miss`` prompts whose greedy continuation is unchanged (prompts that are edit or
    rephrase prompts of the stream itself are left out); ``baseline`` keeps the
    unedited scores of each request for the other chunks that need them, and ``partial`` the
    progress of an interrupted chunk (scores before, records scored after). With ``generation`` and
    short targets each record also gets the greedy and WILD-style answers. Requests are scored in
    blocks of ``options.score_batch`` (their generations share batches; a record's
    ``score_seconds`` is its share of its block's time). Returns the per-request records (index
    ``first_index`` on), the edit seconds and the scoring seconds."""
    eval_start = time.perf_counter()
    if partial is not None and partial.before is not None:  # a resumed chunk: scored before its first edit
        before, near_before, before_seconds = partial.before, partial.near_before, partial.before_seconds
    else:
        before, near_before = [], []
        profile = scoring_profile(editor.hparams, editor.model_name)

        def take(block: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], list[list[int]]]]:
            scores = [_score(editor, request, fmt.eval_metric, options.eval_target_tokens) for request in block]
            return list(zip(scores, _near_miss_of(editor, [r.get("near_miss", []) for r in block],
                                                  options.near_miss_tokens)))

        with tqdm(total=len(requests), desc="scoring before edits", unit="request", disable=not progress,
                  leave=False) as bar:
            for block in _blocks(requests, options.score_batch):
                for score, near in (baseline.get_many(block, profile, take) if baseline is not None else take(block)):
                    before.append(score)
                    near_before.append(near)
                bar.update(len(block))
        before_seconds = time.perf_counter() - eval_start
        if partial is not None:
            partial.save_before(before, near_before, before_seconds)
    edit_seconds = list(apply(requests))
    per_request = edit_seconds if len(edit_seconds) == len(requests) else [None] * len(requests)
    # a near-miss prompt that is itself a prompt of the stream is an edit, not a neighbour: it may change
    edited = stream_prompts(requests)
    records: list[Optional[dict[str, Any]]] = [
        partial.scored_record(first_index + offset) if partial is not None else None for offset in range(len(requests))]
    pending = [offset for offset, record in enumerate(records) if record is None]  # not scored by an interrupted run
    with tqdm(total=len(requests), initial=len(requests) - len(pending), desc="scoring after all edits",
              unit="request", disable=not progress, leave=False) as bar:
        for block in _blocks(pending, options.score_batch):
            start = time.perf_counter()
            scored = _score_block(editor, [(requests[o], first_index + o, before[o], near_before[o]) for o in block],
                                  fmt, options, edited, generation)
            share = (time.perf_counter() - start) / len(block)
            for offset, record in zip(block, scored):
                record["score_seconds"] = share
                if per_request[offset] is not None:
                    record["edit_seconds"] = per_request[offset]
                if partial is not None:
                    partial.keep_record(record)
                records[offset] = record
            bar.update(len(block))
    after_seconds = sum(r.get("score_seconds", 0.0) for r in records)
    return records, float(sum(edit_seconds)), before_seconds + after_seconds


def _check_lengths(editor: Any, requests: Sequence[dict[str, Any]], first_index: int) -> None:
    """Every request of a chunk within the editor's ``max_request_tokens`` (the plugin's default for
    the host's editors) and the model's context, before any scoring or editing starts."""
    limit = getattr(editor.hparams, "max_request_tokens", DEFAULT_MAX_REQUEST_TOKENS)
    for offset, request in enumerate(requests):
        try:
            check_lengths(editor.tok, editor.model, [request], limit)
        except EditRequestError as error:
            raise RunnerInputError(f"record {first_index + offset} of the data: {error}") from error


def _quick_rel(editor: Any, request: dict[str, Any]) -> float:
    """Share of target tokens that are the model's top choice after the prompt (one forward pass):
    the progress bar's running Rel, read right after each edit."""
    prompt = editor.tok(request["prompt"])["input_ids"]
    full = editor.tok(f"{request['prompt']} {request['target_new']}", return_tensors="pt")["input_ids"]
    full = full.to(next(editor.model.parameters()).device)
    with torch.no_grad():
        predicted = editor.model(input_ids=full).logits[0, len(prompt) - 1:-1].argmax(-1)
    return float((predicted == full[0, len(prompt):]).float().mean()) if full.shape[1] > len(prompt) else 0.0


def run_chunk(spec: EditorSpec, fmt: DatasetFormat, chunk: Chunk, requests: Sequence[dict[str, Any]],
              options: RunOptions, model_factory: Optional[ModelFactory] = None,
              bar: Optional[tqdm] = None, setup_cache: Optional[SetupCache] = None,
              out_dir: Optional[str] = None, key: Optional[str] = None,
              plain_models: Optional[PlainModels] = None,
              baseline: Optional[BaselineScores] = None) -> dict[str, Any]:
    """Edit the chunk's requests on a fresh editor, then score all of them; returns the chunk's line.
    With ``options.checkpoint_every`` a plugin editor's progress is kept in ``out_dir`` and a rerun
    continues it (:mod:`wise_plugin.runner.partial`). For the plugin's editors the line also holds
    the memory the editor keeps after the chunk and, for chunks of ``OVERHEAD_MIN_T`` edits or more
    with ``plain_models``, the inference overhead against the unedited model
    (:mod:`wise_plugin.runner.cost`). ``baseline`` shares the unedited-model scores between chunks
    (:mod:`wise_plugin.runner.baseline`)."""
    _seed(options.seed)
    editor = build_editor(spec, model_factory)
    _check_lengths(editor, requests, options.start + chunk.start)
    kind = plugin_kind(editor)
    partial = PartialChunk(out_dir, key, options.checkpoint_every, editor_parts(kind)) \
        if options.checkpoint_every and kind and out_dir and key else None
    done = partial.resume(editor) if partial is not None else 0
    recent: collections.deque = collections.deque(maxlen=20)

    def apply(stream: Sequence[dict[str, Any]]) -> list[float]:
        seconds = list(partial.edit_seconds) if partial is not None else []
        if bar is not None:
            bar.update(done)
        for index, request in enumerate(stream[done:], done):
            seconds.append(_edit(editor, request, setup_cache))
            if partial is not None:
                partial.edit_seconds = seconds
                partial.after_edit(editor, index + 1, len(stream))
            if bar is not None and not bar.disable:
                recent.append(_quick_rel(editor, request))
                bar.set_postfix_str(f"{spec.label} T={chunk.t} chunk {chunk.index + 1}, Rel of the last "
                                    f"{len(recent)} edits right after each: {np.mean(recent):.2f}")
            if bar is not None:
                bar.update(1)
        return seconds

    costs: dict[str, Any] = {}
    try:
        records, edit_seconds, eval_seconds = score_stream(editor, requests, fmt, options, apply,
                                                           options.start + chunk.start, partial=partial,
                                                           progress=options.progress, baseline=baseline)
        costs.update(memory_kept(editor, kind) or {})
        if kind and plain_models is not None and chunk.t >= OVERHEAD_MIN_T:
            editor.model.eval()
            costs["overhead"] = inference_overhead(editor.model, plain_models.get(spec), editor.tok,
                                                   overhead_prompts(requests))
    finally:
        editor = None  # the model goes before the next chunk builds its own
        gc.collect()
    return {"editor": spec.label, "alg_name": spec.alg_name, "hparams": spec.path, "dataset": fmt.name,
            "T": chunk.t, "chunk": chunk.index, "edit_seconds": edit_seconds,
            "eval_seconds": eval_seconds, **costs, "records": records}


def summarize(lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the chunks of one (editor, T): every metric, Avg of the three, seconds per edit."""
    row: dict[str, Any] = {"chunks": len(lines), "edits": sum(len(line["records"]) for line in lines)}
    for metric in METRICS:
        if metric == "avg":
            continue
        per_chunk = [_mean([r[metric] for r in line["records"] if r.get(metric) is not None]) for line in lines]
        per_chunk = [value for value in per_chunk if value is not None]
        row[metric] = float(np.mean(per_chunk)) if per_chunk else None
    parts = [row["rel"], row["gen"] if row["gen"] is not None else row["ood"], row["loc"]]
    row["avg"] = float(np.mean(parts)) if all(p is not None for p in parts) else None
    row["edit_s_per_edit"] = sum(line["edit_seconds"] for line in lines) / row["edits"] if row["edits"] else None
    row["eval_s_per_edit"] = sum(line["eval_seconds"] for line in lines) / row["edits"] if row["edits"] else None
    for cost in ("memory_mb", "cache_mb", "memory_share", "overhead"):  # at the end of each chunk
        values = [line[cost] for line in lines if line.get(cost) is not None]
        row[cost] = float(np.mean(values)) if values else None
    return row


def _upgrade_stored(store: ResultStore, key: str, legacy: str, requests: Sequence[dict[str, Any]]) -> None:
    """A chunk stored before near misses left out the stream's own prompts (key ``legacy``) is
    stored again under ``key`` with its near-miss locality recounted from its records
    (:func:`~wise_plugin.runner.near_miss.without_stream_prompts`) instead of being edited and
    scored again (hours for a 1,000-edit chunk)."""
    if legacy not in store:
        return
    records = without_stream_prompts(store.lines[legacy]["records"], requests)
    if records is None:
        return
    store.add({**store.lines[legacy], "records": records, "key": key})
    logger.info("chunk %s: near-miss locality recounted from the records stored under its earlier key", key)


def run_comparison(specs: Sequence[EditorSpec], requests: Sequence[dict[str, Any]], fmt: DatasetFormat,
                   options: RunOptions, out_dir: str,
                   model_factory: Optional[ModelFactory] = None,
                   imports: Sequence[str] = (), stored_only: bool = False) -> dict[str, Any]:
    """Run (or resume) every chunk of every editor and T; returns summary rows and all chunk lines.

    Inputs are checked before the first edit. Chunks found in the ``results.json`` files of
    ``imports`` under the key this run gives them are taken from there instead of run. The result
    holds, per editor and T, the chunk means (``summary``, with ``planned_chunks`` beside
    ``chunks``), and the stored chunk lines in run order (``chunks``). With ``stored_only`` no chunk
    is run: the result is what is stored so far (a sweep spread over many sittings reports its
    progress), rows of an editor and T with no stored chunk having no scores.
    """
    sample = with_loc_prompts(select_sample(requests, options), options)
    chunks = plan(len(sample), options.t_values)
    store = ResultStore(out_dir)
    jobs = [(spec, chunk, chunk_key(spec, fmt, chunk, sample[chunk.start:chunk.stop], options))
            for spec in specs for chunk in chunks]
    if imports:
        import_results(store, imports, {key for _, _, key in jobs})
    for spec, chunk, key in jobs:
        if key not in store:
            _upgrade_stored(store, key, chunk_key(spec, fmt, chunk, sample[chunk.start:chunk.stop], options, None),
                            sample[chunk.start:chunk.stop])
    todo = [job for job in jobs if job[2] not in store]
    if stored_only:
        logger.info("reporting the %d of %d chunks stored in %s; %d are not run (stored-only)",
                    len(jobs) - len(todo), len(jobs), store.path, len(todo))
        todo = []
    elif len(todo) < len(jobs):
        logger.info("resuming: %d of %d chunks are already in %s", len(jobs) - len(todo), len(jobs), store.path)
    bar = tqdm(total=sum(c.t for _, c, _ in todo), unit="edit", desc="lifelong edits", disable=not options.progress)
    setup_cache = SetupCache()  # every chunk starts from the same unedited weights
    plain_models = PlainModels(lambda spec: build_editor(spec, model_factory))  # for the overhead timings
    baseline = BaselineScores(out_dir, {"dataset": fmt.name, "eval_metric": fmt.eval_metric,
                                        "eval_target_tokens": options.eval_target_tokens,
                                        "near_miss_tokens": options.near_miss_tokens})
    try:
        for spec, chunk, key in todo:
            bar.set_postfix_str(f"{spec.label} T={chunk.t} chunk {chunk.index + 1}/{len(sample) // chunk.t}")
            line = run_chunk(spec, fmt, chunk, sample[chunk.start:chunk.stop], options, model_factory, bar, setup_cache,
                             out_dir, key, plain_models, baseline)
            line["key"] = key
            store.add(line)
            PartialChunk.remove(out_dir, key)
    finally:
        bar.close()
    if baseline.hits:
        logger.info("%d unedited-model scores were read from %s instead of taken again", baseline.hits, baseline.path)
    ordered = [store.lines[key] for _, _, key in jobs if key in store]
    summary = []
    for spec in specs:
        for t in options.t_values:
            lines = [line for line in ordered if line["editor"] == spec.label and line["T"] == t]
            summary.append({"editor": spec.label, "T": t, **summarize(lines), "planned_chunks": len(sample) // t})
    return {"dataset": fmt.name, "metrics": list(fmt.metrics), "t_values": list(options.t_values),
            "editors": [s.label for s in specs], "n": len(sample), "start": options.start, "seed": options.seed,
            "summary": summary, "chunks": ordered}
