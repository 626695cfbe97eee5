"""The host entry point ``apply_lemoe_to_model`` and the restore handle it returns."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch
from torch import nn

from wise_plugin.core.requests import check_call
from wise_plugin.core.restore import RestoreHandle, editing
from wise_plugin.hparams import HParamsError
from wise_plugin.lemoe.checkpoint import load_checkpoint, save_checkpoint
from wise_plugin.lemoe.config import LEMoEHyperParams
from wise_plugin.lemoe.model import attach, detach, find_layer, input_device, pooled_embeddings
from wise_plugin.lemoe.planner import anchor_text, plan_requests
from wise_plugin.lemoe.trainer import calibrate_gate, train_expert, train_router
from wise_plugin.core.anchors import subject_anchors
from wise_plugin.core.rows import load_loc_pool, with_answer_end
from wise_plugin.core.subjects import request_subject

logger = logging.getLogger("wise_plugin.lemoe")


class LEMoERestore(RestoreHandle):
    """Restore handle whose removal path detaches the adaptor created by the call."""

    def __init__(self, model: nn.Module, layer: Any, state: Optional[dict[str, Any]], lifelong: bool,
                 loaded: bool = False) -> None:
        super().__init__(model, layer, state, lifelong, remove=detach, loaded=loaded)


def apply_lemoe_to_model(model: nn.Module, tok: Any, requests: list[dict[str, Any]], hparams: LEMoEHyperParams,
                         copy: bool = False, return_orig_weights: bool = False, keep_original_weight: bool = False,
                         **kwargs: Any) -> tuple[nn.Module, LEMoERestore]:
    """Edit ``model`` in place with LEMoE; returns (model, restore handle).

    Requests fill the open expert up to ``edits_per_expert``; a full expert and its key are
    frozen and the next request opens a new one. Several requests in one call are first put in
    planned order (k-means clusters, see :mod:`wise_plugin.lemoe.planner`) when ``plan`` is on.
    """
    hparams.validate()  # values assigned after loading are checked like the YAML's
    check_call(requests, copy, "LEMoE", tok, model, hparams.max_request_tokens)
    loaded = bool(hparams.load_path) and find_layer(model) is None
    if loaded:
        load_checkpoint(model, hparams.load_path, hparams)  # validated before attaching; all or nothing
        logger.info("LEMoE state loaded from %s", hparams.load_path)
    try:
        layer, created = attach(model, hparams.layer, hparams.expert_kind, hparams.rank, hparams.router_hidden,
                                hparams.key_dim, hparams.lambda_, hparams.seed)
    except BaseException:
        if loaded:
            detach(model)
        raise
    handle = LEMoERestore(model, layer, None if created else layer.snapshot(), hparams.lifelong, loaded)
    device = input_device(model)
    with editing(model, handle):
        layer.gate = hparams.gate
        layer.anchor_route = hparams.anchor_route
        layer.answer_stop = hparams.answer_stop
        if hparams.gate and layer.pool_embeds is None:
            layer.pool_embeds = pooled_embeddings(model, tok, list(load_loc_pool(hparams.loc_pool))).to(layer.device)
        requests = [with_answer_end(request, hparams.answer_end) for request in requests]  # trained and booked with it
        if hparams.plan and len(requests) > 1:
            plan = plan_requests(model, tok, requests, hparams.edits_per_expert, hparams.seed)
            requests = [requests[i] for i in plan.order]
            layer.planner_state = plan.state()
            layer.planner_centroids = torch.as_tensor(plan.centroids, dtype=torch.float32)
            logger.info("LEMoE planned %d edits into %d batches", len(requests), len(plan.batches))
        done = 0
        while done < len(requests):
            start = time.perf_counter()
            if not layer.open:
                if hparams.max_experts is not None and len(layer.experts) >= hparams.max_experts:
                    raise HParamsError(
                        f"all {hparams.max_experts} experts are full ({hparams.edits_per_expert} edits each); "
                        "raise max_experts or edits_per_expert to add more edits.")
                layer.new_expert()
            index = len(layer.experts) - 1
            room = hparams.edits_per_expert - len(layer.edits[index])
            chunk = requests[done:done + room]
            done += len(chunk)
            layer.edits[index].extend((r["prompt"], r["target_new"], request_subject(r)) for r in chunk)
            for request in chunk:
                layer.anchors.add(index, subject_anchors(tok, request) if hparams.subject_anchor else None)
                layer.answers.add(index, tok, request)
            anchors = pooled_embeddings(model, tok, [anchor_text(r) for r in chunk]).to(layer.device)
            layer.anchor_embeds = torch.cat([layer.anchor_embeds, anchors])
            layer.anchor_expert = torch.cat([layer.anchor_expert, torch.full(
                (len(chunk),), index, dtype=torch.long, device=layer.device)])
            result = train_expert(model, layer, index, tok, hparams, device)
            routing = train_router(layer, hparams, index)
            if len(layer.edits[index]) >= hparams.edits_per_expert:
                layer.freeze(index)
            logger.info("LEMoE expert %d: %d edit(s) added (%d held), %d steps, loss %.3f, router %d steps, "
                        "route acc %.2f, %.1f s", index, len(chunk), len(layer.edits[index]), result.iterations,
                        result.loss, routing["steps"], routing["route_acc"], time.perf_counter() - start)
        if hparams.gate:
            calibrate_gate(layer, hparams)
        if hparams.save_path:
            save_checkpoint(model, hparams.save_path, hparams)
            logger.info("LEMoE state after %d edits saved to %s", layer.n_edits, hparams.save_path)
    return model, handle
