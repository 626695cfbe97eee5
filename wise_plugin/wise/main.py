"""The host entry point ``apply_wise_to_model`` and the restore handle it returns."""

from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from wise_plugin.core.anchors import Anchor, AnchorIndex, subject_anchors
from wise_plugin.core.requests import check_call
from wise_plugin.core.restore import RestoreHandle, editing
from wise_plugin.wise.config import WISEHyperParams
from wise_plugin.core.rows import (build_batch, generate_prefixes, load_loc_pool, pick_pool_rows, subject_prompts,
                                   with_answer_end)
from wise_plugin.core.subjects import request_subject
from wise_plugin.wise.layer import WISELayer
from wise_plugin.wise.checkpoint import load_checkpoint, save_checkpoint
from wise_plugin.core.modules import input_device, upper_stack
from wise_plugin.wise.retired import MEMORY_DTYPES
from wise_plugin.wise.model import attach, block_inputs, detach, find_layer, projection_inputs
from wise_plugin.wise.caches import SetupCache, model_setup_cache
from wise_plugin.wise.trainer import train_edit

logger = logging.getLogger("wise_plugin.wise")


class WISERestore(RestoreHandle):
    """Restore handle whose removal path detaches the side memory created by the call."""

    def __init__(self, model: nn.Module, layer: Any, state: Optional[dict[str, Any]], lifelong: bool,
                 loaded: bool = False) -> None:
        super().__init__(model, layer, state, lifelong, remove=detach, loaded=loaded)


def _replay_inputs(model: nn.Module, layer: WISELayer, tok: Any, texts: list[str],
                   lower: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection inputs of replayed earlier edits, each computed once (alone, so its values do not
    depend on the batch it was first drawn in) and kept on the layer for later draws while the edit
    stays in the replay reservoir."""
    book = layer.book
    kept = {f"{book.memory[i][0]} {book.memory[i][1]}" for i in book.reservoir}
    for text in [text for text in layer.caches.replay_cache if text not in kept]:
        del layer.caches.replay_cache[text]
    for text in texts:
        if text not in layer.caches.replay_cache:  # kept: the tokens its routing score reads
            acts, mask = projection_inputs(model, layer, tok, [text], lower=lower)
            layer.caches.replay_cache[text] = acts[0][mask[0].bool()]
    rows = [layer.caches.replay_cache[text] for text in texts]
    lengths = torch.tensor([row.shape[0] for row in rows])
    mask = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()
    return pad_sequence(rows, batch_first=True), mask.to(rows[0].device)


def _rehearsed_inputs(model: nn.Module, layer: WISELayer, tok: Any, texts: Sequence[str],
                      block: nn.Module) -> list[torch.Tensor]:
    """Hidden states entering the edited block for replayed rows: kept on the layer from each
    edit's own setup (computed alone here only for edits that have none, e.g. from an older
    checkpoint), so the fast path runs only the new rows through the lower blocks."""
    missing = [text for text in texts if text not in layer.caches.block_inputs]
    layer.caches.block_inputs.update(zip(missing, block_inputs(model, block, tok, missing)))
    return [layer.caches.block_inputs[text] for text in texts]


@dataclass
class LocDraw:
    """The irrelevant rows that constrain one edit: pool rows by index, and texts (the request's own
    ``loc_prompt``, stored edits of earlier groups)."""

    pool_rows: list[int]
    given: list[str]
    replayed: list[str]


def _draw_loc(layer: WISELayer, tok: Any, request: dict[str, Any], hparams: WISEHyperParams,
              anchors: Optional[list[Anchor]]) -> LocDraw:
    """Pool draws, the request's own ``loc_prompt`` when the host passes one (source-repo EasyEdit's
    ``loc_prompts``), and with ``retrieve`` + ``replay`` stored edits of earlier groups, which the new
    memory must not claim. With subject anchors (``anchors``: the new edit's) only the earlier edits
    that name a subject of the active memory are replayed: the anchors already keep every other row
    away from it, and pushing their scores down as well cost up to the full ``n_iter`` per edit on
    long streams without changing where any row goes."""
    rows = pick_pool_rows(layer.caches.pool_acts.shape[0], hparams.n_loc, hparams.seed + layer.book.edits)
    given = request.get("loc_prompt")
    given = ([given] if isinstance(given, str) else list(given)) if given else []
    replayed = []
    if not (hparams.retrieve and hparams.replay):
        return LocDraw(rows, given, replayed)
    earlier = [layer.book.memory[i] for i in layer.book.replay_reservoir(hparams.replay_pool)]
    groups, active = layer.book.anchors.groups, len(layer.book.group_thresholds)
    active_anchors = groups[active] if active < len(groups) else []  # None: the active memory is open
    if anchors is not None and active_anchors is not None and earlier:
        gate = AnchorIndex()
        gate.add(0, list(anchors) + list(active_anchors))
        encoded = tok([f"{p} {t}" for p, t in earlier], add_special_tokens=False, padding=True, return_tensors="pt")
        named = gate.hits(encoded["input_ids"], encoded["attention_mask"], 1)[:, 0].tolist()
        earlier = [edit for edit, keep in zip(earlier, named) if keep]
    if earlier:
        drawn = random.Random(hparams.seed - layer.book.edits).sample(earlier, k=min(hparams.n_loc, len(earlier)))
        replayed = [f"{prompt} {target}" for prompt, target in drawn]
    return LocDraw(rows, given, replayed)


def _loc_rows(model: nn.Module, layer: WISELayer, tok: Any, draw: LocDraw,
              lower: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path: projection inputs of the drawn irrelevant rows, from the pool and replay caches."""
    parts = [(layer.caches.pool_acts[draw.pool_rows], layer.caches.pool_mask[draw.pool_rows])]
    if draw.given:
        parts.append(projection_inputs(model, layer, tok, draw.given, lower=lower))
    if draw.replayed:
        parts.append(_replay_inputs(model, layer, tok, draw.replayed, lower))
    # padding past every scored token is dropped (masks may skip the first token: see content_mask)
    width = max(int(mask.nonzero()[:, 1].max()) + 1 if mask.any() else 1 for _, mask in parts)
    parts = [(acts[:, :width], mask[:, :width]) for acts, mask in parts]
    acts = torch.cat([F.pad(a, (0, 0, 0, width - a.shape[1])) for a, _ in parts])
    mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m in parts])
    return acts, mask


def _loc_tokens(layer: WISELayer, tok: Any, draw: LocDraw, device: torch.device) -> dict[str, torch.Tensor]:
    """Reference path: the drawn irrelevant rows as token ids (right padded), to run through the model."""
    texts = [layer.caches.pool_texts[row] for row in draw.pool_rows] + draw.given + draw.replayed
    encoded = tok(texts, padding=True, return_tensors="pt", padding_side="right").to(device)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _setup(model: nn.Module, layer: WISELayer, tok: Any, inner_param: str, hparams: WISEHyperParams,
           lower: Sequence[nn.Module], setup_cache: Optional[SetupCache]) -> None:
    """Prompt prefixes and pool projection inputs of a new side memory, taken from ``setup_cache``
    when it holds them for a model with the same weights (the lifelong runner rebuilds the unedited
    model for every chunk and holds one cache for the whole comparison; otherwise the model's own)."""
    pool = load_loc_pool(hparams.loc_pool)
    setup_cache = setup_cache if setup_cache is not None else model_setup_cache(model)
    key = SetupCache.key(model, tok, inner_param, hparams, pool)
    found = setup_cache.lookup(key)
    if found is not None:
        prefixes, pool_acts, pool_mask = found
    else:
        prefixes = layer.caches.prefixes if layer.caches.prefixes is not None else \
            generate_prefixes(model, tok, hparams.n_prefixes, hparams.prefix_lengths, hparams.seed)
        pool_acts, pool_mask = projection_inputs(model, layer, tok, list(pool), lower=lower)
        setup_cache.store(key, prefixes, pool_acts, pool_mask)
    if layer.caches.prefixes is None:
        layer.caches.prefixes = prefixes
    layer.caches.pool_texts, layer.caches.pool_acts, layer.caches.pool_mask = pool, pool_acts, pool_mask


def _row_tokens(tok: Any, text: str) -> int:
    """Tokens of one edit row's text, as the row budget counts them (``_fit_rows``, ``_memory_full``)."""
    return len(tok(text)["input_ids"])


def _fit_rows(tok: Any, request: dict[str, Any], prefixes: Sequence[str], replay: list[tuple[str, str]],
              budget: Optional[int], statements: Sequence[str] = ()
              ) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """The rehearsed edits, then the prefixed copies of the edit, then the subject statements, that
    fit in ``budget`` tokens beside the bare edit row. A long edit (a passage) then trains on a few
    rows instead of twenty full-length ones; short ones keep them all. Rehearsed edits come first:
    they are what keeps the earlier edits of the memory from being overwritten, while a passage
    already gives the edit its own context."""
    if budget is None:
        return list(prefixes), replay, list(statements)
    used = _row_tokens(tok, f"{request['prompt']} {request['target_new']}")

    def fitting(items: Sequence[Any], row_text: Callable[[Any], str]) -> list[Any]:
        """The items, in order, whose rows still fit beside those taken so far."""
        nonlocal used
        kept = []
        for item in items:
            cost = _row_tokens(tok, row_text(item))
            if used + cost <= budget:
                used += cost
                kept.append(item)
        return kept

    kept_replay = fitting(replay, lambda pair: f"{pair[0]} {pair[1]}")
    kept_prefixes = fitting(prefixes, lambda prefix: f"{prefix}{request['prompt']} {request['target_new']}")
    kept_statements = fitting(statements, lambda statement: f"{statement} {request['target_new']}")
    return kept_prefixes, kept_replay, kept_statements


def _memory_full(tok: Any, layer: WISELayer, request: dict[str, Any], hparams: WISEHyperParams) -> bool:
    """Whether the active WISE-Retrieve memory must close before its ``merge_freq`` edits: the next
    edit (taken as long as this one) could no longer rehearse all of its edits within
    ``row_token_budget``. Dropping rehearsed rows lets a new edit overwrite the memory's earlier
    ones, so with long edits (passages) memories hold fewer edits instead."""
    if hparams.row_token_budget is None or not hparams.retrieve or hparams.save_freq is None:
        return False
    group = layer.book.active_edits()[-hparams.rehearse:] if hparams.rehearse else []
    needed = _row_tokens(tok, f"{request['prompt']} {request['target_new']}") \
        + sum(_row_tokens(tok, f"{p} {t}") for p, t in group)
    return needed > hparams.row_token_budget


def _edit_one(model: nn.Module, layer: WISELayer, tok: Any, request: dict[str, Any], hparams: WISEHyperParams,
              stack: Any, lower: Sequence[nn.Module], device: torch.device) -> None:
    """Train one request into the side memory and book it (shards, merges, thresholds)."""
    start = time.perf_counter()
    request = with_answer_end(request, hparams.answer_end)  # trained, rehearsed and booked with its end mark
    group = layer.book.active_edits()  # edits that live in the memory being trained
    replay = random.Random(hparams.seed + layer.book.edits).sample(group, k=min(hparams.rehearse, len(group)))
    statements = subject_prompts(request_subject(request), hparams.subject_templates)
    prefixes, replay, statements = _fit_rows(tok, request, layer.caches.prefixes, replay,
                                             hparams.row_token_budget, statements)
    batch = build_batch(tok, request["prompt"], request["target_new"], prefixes,
                        hparams.use_chat_template, device, replay, statements, hparams.answer_end)
    anchors = subject_anchors(tok, request) if hparams.subject_anchor else None
    draw = _draw_loc(layer, tok, request, hparams, anchors)
    # cached irrelevant rows, also for a layout the fast path does not know (stack None);
    # the reference path (fast_path false) runs them through the model instead
    loc = _loc_rows(model, layer, tok, draw, lower) if hparams.fast_path else _loc_tokens(layer, tok, draw, device)
    rehearsed = _rehearsed_inputs(model, layer, tok, batch.rehearsed, stack.blocks[0]) \
        if stack is not None and layer.caches.kwargs_shared else []
    result = train_edit(model, layer, stack, batch, loc, hparams, rehearsed)
    layer.book.memory.append((request["prompt"], request["target_new"]))
    layer.book.anchors.add(len(layer.book.group_thresholds), anchors)
    layer.book.answers.add(len(layer.book.group_thresholds), tok, request)
    if result.block_input is not None:
        layer.caches.block_inputs[batch.text] = result.block_input
    layer.finish_edit(result.score, hparams.act_ratio, hparams.save_freq, hparams.merge_freq,
                      hparams.merge_alg, hparams.densities, hparams.weights,
                      result.probe if hparams.refresh_threshold else None,
                      close_memory=_memory_full(tok, layer, request, hparams))
    logger.info("WISE edit %d (%r -> %r): %d iterations, %.1f s, edit loss %.3f, score %.2f, thresholds %s",
                layer.book.edits, request["prompt"], request["target_new"], result.iterations,
                time.perf_counter() - start, result.edit_loss, result.score,
                [round(t, 2) for t in layer.thresholds()])


def apply_wise_to_model(model: nn.Module, tok: Any, requests: list[dict[str, Any]], hparams: WISEHyperParams,
                        copy: bool = False, return_orig_weights: bool = False, keep_original_weight: bool = False,
                        setup_cache: Optional[SetupCache] = None, **kwargs: Any) -> tuple[nn.Module, WISERestore]:
    """Edit ``model`` in place with WISE, one request after another; returns (model, restore handle).

    ``setup_cache`` (optional, held by the caller) shares the once-per-model setup between models
    with the same weights; without it each model keeps its own.
    """
    hparams.validate()  # values assigned after loading are checked like the YAML's
    check_call(requests, copy, "WISE", tok, model, hparams.max_request_tokens)
    inner_param = hparams.inner_params[0]
    loaded = bool(hparams.load_path) and find_layer(model) is None
    if loaded:
        load_checkpoint(model, hparams.load_path, inner_param)  # validated before attaching; all or nothing
        logger.info("WISE state loaded from %s", hparams.load_path)
    try:
        layer, created = attach(model, inner_param, hparams.mask_ratio, hparams.seed, hparams.retrieve)
    except BaseException:
        if loaded:
            detach(model)
        raise
    layer.route_by = hparams.route_by
    layer.anchor_route = hparams.anchor_route
    layer.answer_stop = hparams.answer_stop
    layer.retired.dtype = MEMORY_DTYPES[hparams.memory_dtype]
    layer.retired.rank = hparams.memory_rank
    handle = WISERestore(model, layer, None if created else layer.snapshot(), hparams.lifelong, loaded)
    with editing(model, handle):  # from here on, any failure leaves the model as it was before the call
        layout = upper_stack(model, inner_param)
        lower = layout.lower if layout is not None else []  # frozen blocks below the edit
        if not layer.caches.ready():
            _setup(model, layer, tok, inner_param, hparams, lower, setup_cache)
        stack = layout if hparams.fast_path else None
        if hparams.fast_path and stack is None:
            logger.warning("fast path unavailable for %s; running the full model on the edit rows every iteration",
                           type(model).__name__)
        device = input_device(model)
        for request in requests:
            _edit_one(model, layer, tok, request, hparams, stack, lower, device)
        if hparams.save_path:
            save_checkpoint(model, hparams.save_path, inner_param)
            logger.info("WISE state after %d edits saved to %s", layer.book.edits, hparams.save_path)
    # The source-repository host ends a sequential WISE run with ``edited_model.save(save_path)``
    # (its own WISE returns a wrapper that has that method); ours returns the model itself.
    if not hasattr(model, "save"):
        model.save = functools.partial(save_checkpoint, model, inner_param=inner_param)
    return model, handle
