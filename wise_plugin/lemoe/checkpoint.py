"""Saving and loading the LEMoE state: tensors as safetensors, the rest as JSON (no pickle).

A checkpoint folder holds ``lemoe_state.json`` (module path, sizes, the edits of each expert, gate
thresholds, which expert is open, the planner's batches) and the ``lemoe_state-<digest>.safetensors``
it names (experts, keys, router, routing anchors, irrelevant-text embeddings, planner centroids, a
fingerprint of the input embeddings), written atomically (:mod:`wise_plugin.core.checkpoint_files`).
Loading checks everything it can before attaching, and takes the adaptor out again if it still fails.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wise_plugin.core.checkpoint_files import (CheckpointError, read_checkpoint, same_weights, weight_fingerprint,
                                               write_checkpoint)
from wise_plugin.core.anchors import AnchorIndex, AnswerIndex
from wise_plugin.lemoe.model import attach, detach, find_layer
from wise_plugin.core.modules import module_path

FORMAT = "wise-plugin/lemoe"
VERSION = 2  # 2: digest-named tensor file and embedding fingerprint; version 1 folders still load
STEM = "lemoe_state"  # lemoe_state.json + the lemoe_state-<digest>.safetensors it names


def save_checkpoint(model: nn.Module, path: str, hparams: Any = None) -> str:
    """Write the LEMoE state of ``model`` into the folder ``path`` (created if needed)."""
    layer = find_layer(model)
    if layer is None:
        raise ValueError("this model has no LEMoE adaptor to save; edit it with LEMoE first.")
    tensors = {f"router.{k}": v for k, v in layer.router.state_dict().items()}
    tensors["anchor_embeds"], tensors["anchor_expert"] = layer.anchor_embeds, layer.anchor_expert
    # routing reads the input embeddings: another model's would route the saved anchors wrongly
    tensors["embedding_fingerprint"] = weight_fingerprint(model.get_input_embeddings().weight)
    if len(layer.keys):
        tensors["keys"] = layer.key_matrix()
    for index, expert in enumerate(layer.experts):
        tensors.update({f"expert.{index}.{k}": v for k, v in expert.state_dict().items()})
    if layer.pool_embeds is not None:
        tensors["pool_embeds"] = layer.pool_embeds
    if getattr(layer, "planner_centroids", None) is not None:
        tensors["planner_centroids"] = layer.planner_centroids
    owner = next(name for name, module in model.named_modules() if module is layer)
    meta = {
        "format": FORMAT, "version": VERSION, "layer": ".".join(module_path(owner)),
        "hidden": layer.hidden, "expert_width": layer.expert_width, "router_hidden": layer.router.down.out_features,
        "key_dim": layer.router.up.out_features, "lambda_": layer.lambda_, "seed": layer.seed,
        "n_experts": len(layer.experts), "open": layer.open, "gate": layer.gate,
        "anchor_route": layer.anchor_route, "answer_stop": layer.answer_stop,
        "edits": [[list(e) for e in edits] for edits in layer.edits], "thresholds": layer.thresholds,
        "anchors": layer.anchors.state(), "answers": layer.answers.state(),
        "planner_state": layer.planner_state,
    }
    return write_checkpoint(path, STEM, tensors, meta)


def load_checkpoint(model: nn.Module, path: str, hparams: Any = None) -> None:
    """Attach the LEMoE adaptor of a folder written by ``save_checkpoint`` to ``model``, which has none.
    All or nothing: on any error the model is left as it was and a ``CheckpointError`` says why."""
    tensors, meta = read_checkpoint(path, STEM, FORMAT, (1, VERSION), "LEMoE")
    if hparams is not None and ".".join(module_path(hparams.layer)) != meta.get("layer"):
        raise CheckpointError(f"checkpoint {path!r} extends {meta.get('layer')!r}, but the hparams' layer is {hparams.layer!r}.")
    if find_layer(model) is not None:
        raise CheckpointError("this model already has a LEMoE adaptor; detach it before loading a checkpoint.")
    embeddings = model.get_input_embeddings().weight
    if embeddings.shape[1] != meta.get("hidden"):
        raise CheckpointError(f"checkpoint {path!r} was made for hidden size {meta.get('hidden')}; this model's is "
                              f"{embeddings.shape[1]}.")
    if "embedding_fingerprint" in tensors and not same_weights(tensors["embedding_fingerprint"],
                                                               weight_fingerprint(embeddings)):
        raise CheckpointError(f"checkpoint {path!r} was saved from a model whose input embeddings differ from this "
                              "model's (same shape, other values); load it into the model it was saved from.")
    layer, _ = attach(model, meta["layer"], "lowrank", meta["expert_width"], meta["router_hidden"], meta["key_dim"],
                      meta["lambda_"], meta["seed"])
    try:
        _fill(layer, tensors, meta)
    except Exception as error:
        detach(model)
        raise CheckpointError(f"checkpoint {path!r} could not be loaded ({type(error).__name__}: {error}); "
                              "the model is unchanged.") from error


def _fill(layer: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put the saved experts, router, keys and bookkeeping into a freshly attached adaptor."""
    device = layer.device
    tensors = {k: v.to(device) for k, v in tensors.items()}
    layer.router.load_state_dict({k[len("router."):]: v for k, v in tensors.items() if k.startswith("router.")})
    for index in range(meta["n_experts"]):
        layer.new_expert()
        layer.experts[index].load_state_dict(
            {k[len(f"expert.{index}."):]: v for k, v in tensors.items() if k.startswith(f"expert.{index}.")})
        with torch.no_grad():
            layer.keys[index].copy_(tensors["keys"][index])
        if index < meta["n_experts"] - 1 or not meta["open"]:
            layer.freeze(index)
    layer.open = bool(meta["open"]) and meta["n_experts"] > 0
    layer.edits = [[tuple(e) for e in edits] for edits in meta["edits"]]
    layer.thresholds = list(meta["thresholds"])
    layer.anchors = AnchorIndex.from_state(meta.get("anchors"))  # older checkpoints: every expert open
    layer.answers = AnswerIndex.from_state(meta.get("answers"))  # older checkpoints: no expert stops early
    layer.gate = bool(meta["gate"])
    # inference settings, so a loaded model routes as the saved one did before any edit call
    layer.anchor_route = bool(meta.get("anchor_route", False))
    layer.answer_stop = bool(meta.get("answer_stop", False))
    layer.anchor_embeds, layer.anchor_expert = tensors["anchor_embeds"], tensors["anchor_expert"].long()
    layer.pool_embeds = tensors.get("pool_embeds")
    layer.planner_centroids = tensors.get("planner_centroids")
    layer.planner_state = meta["planner_state"]
