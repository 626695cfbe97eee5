"""Saving and loading the whole WISE editor state: tensors as safetensors, the rest as JSON.

A checkpoint is a folder with ``wise_state.safetensors`` (side memory, its base, shard changes,
the current mask) and ``wise_state.json`` (module path, counters, threshold, prefixes and the
stored edits used for rehearsal). Loading needs no pickle, so it works with torch's safe loading,
and moves every tensor to the edited layer's device and dtype.
"""

from __future__ import annotations


import torch
from torch import nn

from wise_plugin.core.checkpoint_files import read_checkpoint, write_checkpoint
from wise_plugin.hparams import HParamsError
from wise_plugin.core.modules import module_path
from wise_plugin.wise.model import attach, find_layer

FORMAT = "wise-plugin/wise-merge"
VERSION = 1
STEM = "wise_state"  # wise_state.safetensors + wise_state.json


def save_checkpoint(model: nn.Module, path: str, inner_param: str) -> str:
    """Write the WISE state of ``model`` into the folder ``path`` (created if needed)."""
    layer = find_layer(model)
    if layer is None:
        raise ValueError("this model has no WISE side memory to save; edit it with WISE first.")
    state = layer.snapshot()
    tensors = {"side_weight": state["side_weight"], "side_base": state["side_base"], "mask": state["mask"]}
    if state["shard_start"] is not None:
        tensors["shard_start"] = state["shard_start"]
    if state["group_thresholds"]:
        tensors["group_stack"] = state["group_stack"]
    for index, (acts, row_mask, prompt_mask) in enumerate(state["probes"]):
        tensors.update({f"probe.{index}.acts": acts, f"probe.{index}.row_mask": row_mask,
                        f"probe.{index}.prompt_mask": prompt_mask})
    block_texts = list(state["block_inputs"])
    for index, text in enumerate(block_texts):
        tensors[f"block_input.{index}"] = state["block_inputs"][text]
    for index, delta in enumerate(state["shard_deltas"]):
        tensors[f"shard_delta.{index}"] = delta
    meta = {
        "format": FORMAT, "version": VERSION, "inner_param": ".".join(module_path(inner_param)),
        "shape": list(layer.side_weight.shape), "dtype": str(layer.side_weight.dtype).removeprefix("torch."),
        "mask_ratio": layer.mask_ratio, "seed": layer.seed, "edits": state["edits"],
        "shard_index": state["shard_index"], "n_shard_deltas": len(state["shard_deltas"]),
        "n_probes": len(state["probes"]), "block_input_texts": block_texts,
        "min_edit_score": state["min_edit_score"], "threshold": state["threshold"],
        "retrieve": layer.retrieve, "route_by": layer.route_by, "group_thresholds": state["group_thresholds"],
        "group_start": state["group_start"], "prefixes": layer.prefixes, "memory": [list(item) for item in state["memory"]],
        # fast path: whether rehearsed rows may come from the stored hidden states (so a resumed
        # edit takes the same path as an uninterrupted one)
        "kwargs_shared": layer.kwargs_shared,
    }
    return write_checkpoint(path, STEM, tensors, meta)


def load_checkpoint(model: nn.Module, path: str, inner_param: str) -> None:
    """Attach (or overwrite) the WISE side memory of ``model`` from a folder written by ``save_checkpoint``."""
    tensors, meta = read_checkpoint(path, STEM, FORMAT, VERSION, "WISE")
    wanted = ".".join(module_path(inner_param))
    if meta["inner_param"] != wanted:
        raise HParamsError(f"checkpoint {path!r} edits {meta['inner_param']!r}, but inner_params names {wanted!r}.")
    layer, _ = attach(model, inner_param, meta["mask_ratio"], meta["seed"], meta["retrieve"])
    if list(layer.side_weight.shape) != meta["shape"]:
        raise HParamsError(f"checkpoint {path!r} holds a {meta['shape']} side memory; this model's is "
                           f"{list(layer.side_weight.shape)} (another model?).")
    device, dtype = layer.side_weight.device, layer.side_weight.dtype
    cast = lambda name: tensors[name].to(device=device, dtype=dtype)  # noqa: E731
    layer.mask_ratio, layer.seed, layer.prefixes = meta["mask_ratio"], meta["seed"], meta["prefixes"]
    layer.route_by = meta.get("route_by", "score")  # checkpoints before route_by routed by score
    layer.kwargs_shared = meta.get("kwargs_shared")
    layer.restore({
        "side_weight": cast("side_weight"), "side_base": cast("side_base"),
        "shard_start": cast("shard_start") if "shard_start" in tensors else None,
        "shard_deltas": [cast(f"shard_delta.{i}") for i in range(meta["n_shard_deltas"])],
        "mask": tensors["mask"].to(device=device, dtype=torch.bool),
        "edits": meta["edits"], "shard_index": meta["shard_index"],
        "min_edit_score": meta["min_edit_score"], "threshold": meta["threshold"],
        "memory": [tuple(item) for item in meta["memory"]],
        "group_stack": cast("group_stack") if "group_stack" in tensors else layer.group_stack.narrow(1 if layer.conv1d_layout else 0, 0, 0),
        "group_thresholds": meta["group_thresholds"], "group_start": meta["group_start"],
        "probes": [(cast(f"probe.{i}.acts"), tensors[f"probe.{i}.row_mask"].to(device),
                    tensors[f"probe.{i}.prompt_mask"].to(device)) for i in range(meta["n_probes"])],
        # hidden states in the model's dtype (they enter the edited block); absent in older checkpoints
        "block_inputs": {text: tensors[f"block_input.{i}"].to(device)
                         for i, text in enumerate(meta.get("block_input_texts", []))},
    })
