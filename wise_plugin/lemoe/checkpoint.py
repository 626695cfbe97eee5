"""Saving and loading the LEMoE state: tensors as safetensors, the rest as JSON (no pickle).

A checkpoint folder holds ``lemoe_state.safetensors`` (experts, keys, router, routing anchors,
irrelevant-text embeddings, planner centroids) and ``lemoe_state.json`` (module path, sizes,
the edits of each expert, gate thresholds, which expert is open, the planner's batches).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wise_plugin.core.checkpoint_files import read_checkpoint, write_checkpoint
from wise_plugin.hparams import HParamsError
from wise_plugin.lemoe.model import attach, find_layer
from wise_plugin.core.modules import module_path

FORMAT = "wise-plugin/lemoe"
VERSION = 1
STEM = "lemoe_state"  # lemoe_state.safetensors + lemoe_state.json


def save_checkpoint(model: nn.Module, path: str, hparams: Any = None) -> str:
    """Write the LEMoE state of ``model`` into the folder ``path`` (created if needed)."""
    layer = find_layer(model)
    if layer is None:
        raise ValueError("this model has no LEMoE adaptor to save; edit it with LEMoE first.")
    tensors = {f"router.{k}": v for k, v in layer.router.state_dict().items()}
    tensors["anchor_embeds"], tensors["anchor_expert"] = layer.anchor_embeds, layer.anchor_expert
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
        "edits": [[list(e) for e in edits] for edits in layer.edits], "thresholds": layer.thresholds,
        "planner_state": layer.planner_state,
    }
    return write_checkpoint(path, STEM, tensors, meta)


def load_checkpoint(model: nn.Module, path: str, hparams: Any = None) -> None:
    """Attach the LEMoE adaptor of a folder written by ``save_checkpoint`` to ``model``."""
    tensors, meta = read_checkpoint(path, STEM, FORMAT, VERSION, "LEMoE")
    if hparams is not None and ".".join(module_path(hparams.layer)) != meta["layer"]:
        raise HParamsError(f"checkpoint {path!r} extends {meta['layer']!r}, but the hparams' layer is {hparams.layer!r}.")
    if find_layer(model) is not None:
        raise HParamsError("this model already has a LEMoE adaptor; detach it before loading a checkpoint.")
    hidden = model.get_input_embeddings().embedding_dim
    if hidden != meta["hidden"]:
        raise HParamsError(f"checkpoint {path!r} was made for hidden size {meta['hidden']}; this model's is {hidden}.")
    layer, _ = attach(model, meta["layer"], "lowrank", meta["expert_width"], meta["router_hidden"], meta["key_dim"],
                      meta["lambda_"], meta["seed"])
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
    layer.gate = bool(meta["gate"])
    layer.anchor_embeds, layer.anchor_expert = tensors["anchor_embeds"], tensors["anchor_expert"].long()
    layer.pool_embeds = tensors.get("pool_embeds")
    layer.planner_centroids = tensors.get("planner_centroids")
    layer.planner_state = meta["planner_state"]
