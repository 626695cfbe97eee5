"""Saving and loading the whole WISE editor state: tensors as safetensors, the rest as JSON.

A checkpoint is a folder with ``wise_state.json`` and the ``wise_state-<digest>.safetensors`` it
names (written atomically, see :mod:`wise_plugin.core.checkpoint_files`): the layer's
weights (side memory, its base, retired memories), its book (shard changes, the current mask,
counters, thresholds, the stored edits used for rehearsal) and its caches (prefixes, rehearsal
states), each written and read by the object that holds it. Loading needs no pickle, so it works
with torch's safe loading, and moves every tensor to the edited layer's device and dtype.
Everything is read and checked (format, digest, module, shape, a fingerprint of the base weights)
before the side memory is attached, and a load that still fails takes it out again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wise_plugin.core.checkpoint_files import (CheckpointError, read_checkpoint, same_weights, weight_fingerprint,
                                               write_checkpoint)
from wise_plugin.core.modules import module_path
from wise_plugin.wise.model import attach, detach, find_layer, resolve

FORMAT = "wise-plugin/wise-merge"
# 2: digest-named tensor file and base-weight fingerprint; 3: retired memories kept sparse
# (``retired.<m>.support`` / ``.values`` instead of a dense ``group_stack``); 4: a retired memory may
# be low-rank (``retired.<m>.left`` / ``.right``, see ``memory_rank``). Versions 1-3 still load.
VERSION = 4
STEM = "wise_state"  # wise_state.json + the wise_state-<digest>.safetensors it names
_NEEDED = ("side_weight", "side_base", "mask")


def save_checkpoint(model: nn.Module, path: str, inner_param: str) -> str:
    """Write the WISE state of ``model`` into the folder ``path`` (created if needed): the sum of
    the layer's, its book's and its caches' checkpoint states."""
    layer = find_layer(model)
    if layer is None:
        raise ValueError("this model has no WISE side memory to save; edit it with WISE first.")
    tensors: dict[str, torch.Tensor] = {"base_fingerprint": weight_fingerprint(layer.base.weight)}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "inner_param": ".".join(module_path(inner_param))}
    for part in (layer, layer.book, layer.caches):
        part_tensors, part_meta = part.checkpoint_state()
        tensors.update(part_tensors)
        meta.update(part_meta)
    return write_checkpoint(path, STEM, tensors, meta)


def load_checkpoint(model: nn.Module, path: str, inner_param: str) -> None:
    """Attach the WISE side memory of a folder written by ``save_checkpoint`` to ``model``, which has
    none. All or nothing: on any error the model is left as it was and a ``CheckpointError`` says why."""
    if find_layer(model) is not None:
        raise CheckpointError("this model already has a WISE side memory; detach it before loading a checkpoint.")
    tensors, meta = read_checkpoint(path, STEM, FORMAT, (1, VERSION), "WISE")
    wanted = ".".join(module_path(inner_param))
    if meta.get("inner_param") != wanted:
        raise CheckpointError(f"checkpoint {path!r} edits {meta.get('inner_param')!r}, but inner_params names {wanted!r}.")
    missing = [name for name in _NEEDED if name not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} lacks the tensors {missing}; it is incomplete or not a WISE state.")
    _, _, module = resolve(model, inner_param)
    if list(module.weight.shape) != meta.get("shape") or list(tensors["side_weight"].shape) != meta.get("shape"):
        raise CheckpointError(f"checkpoint {path!r} holds a {meta.get('shape')} side memory; this model's projection is "
                              f"{list(module.weight.shape)} (another model?).")
    if "base_fingerprint" in tensors and not same_weights(tensors["base_fingerprint"], weight_fingerprint(module.weight)):
        raise CheckpointError(f"checkpoint {path!r} was saved from a model whose {wanted} weights differ from this "
                              "model's (same shape, other values): its edits are changes to those weights. Load it "
                              "into the model it was saved from.")
    layer, _ = attach(model, inner_param, meta["mask_ratio"], meta["seed"], meta["retrieve"])
    try:
        layer.load_checkpoint_state(tensors, meta)
        layer.book.load_checkpoint_state(tensors, meta, layer.side_weight.dtype)
        layer.caches.load_checkpoint_state(tensors, meta, layer.side_weight.device)
    except Exception as error:
        detach(model)
        raise CheckpointError(f"checkpoint {path!r} could not be loaded ({type(error).__name__}: {error}); "
                              "the model is unchanged.") from error
