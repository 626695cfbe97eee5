"""Saving and loading the whole WISE editor state: tensors as safetensors, the rest as JSON.

A checkpoint is a folder with ``wise_state.safetensors`` and ``wise_state.json``: the layer's
weights (side memory, its base, retired memories), its book (shard changes, the current mask,
counters, thresholds, the stored edits used for rehearsal) and its caches (prefixes, rehearsal
states), each written and read by the object that holds it. Loading needs no pickle, so it works
with torch's safe loading, and moves every tensor to the edited layer's device and dtype.
"""

from __future__ import annotations

from typing import Any

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
    """Write the WISE state of ``model`` into the folder ``path`` (created if needed): the sum of
    the layer's, its book's and its caches' checkpoint states."""
    layer = find_layer(model)
    if layer is None:
        raise ValueError("this model has no WISE side memory to save; edit it with WISE first.")
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "inner_param": ".".join(module_path(inner_param))}
    for part in (layer, layer.book, layer.caches):
        part_tensors, part_meta = part.checkpoint_state()
        tensors.update(part_tensors)
        meta.update(part_meta)
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
    layer.load_checkpoint_state(tensors, meta)
    layer.book.load_checkpoint_state(tensors, meta, layer.side_weight.dtype)
    layer.caches.load_checkpoint_state(tensors, meta, layer.side_weight.device)
