"""Finding the projection named by ``inner_params``, swapping a ``WISELayer`` in and out, and the
projection inputs WISE caches (the generic module helpers live in :mod:`wise_plugin.core.modules`)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from wise_plugin.core.anchors import extend_row_ids
from wise_plugin.core.modules import (block_calls, cached_length, content_mask, find_wrapper, input_device, locate,
                                      swap_in, swap_out)
from wise_plugin.hparams import HParamsError
from wise_plugin.wise.layer import WISELayer


def resolve(model: nn.Module, inner_param: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent module, attribute name, module) of the projection, with a clear error if absent."""
    parent, name, module = locate(model, inner_param, "inner_params")
    if isinstance(module, WISELayer):
        return parent, name, module
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise HParamsError(f"inner_params {inner_param!r} names a {type(module).__name__} without a weight.")
    if not isinstance(module, nn.Linear) and type(module).__name__ != "Conv1D":
        raise HParamsError(
            f"inner_params {inner_param!r} is a {type(module).__name__}; WISE edits an FFN projection "
            "(nn.Linear, or GPT-2's Conv1D), e.g. model.layers[N].mlp.down_proj.weight."
        )
    # nn.Linear keeps [out, in], Conv1D [in, out]; an FFN output projection narrows the FFN's wide
    # hidden layer back to the model width, so anything else (q/o projections, up_proj) is a wrong path
    out_features, in_features = module.weight.shape if isinstance(module, nn.Linear) else module.weight.shape[::-1]
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    if in_features <= out_features or (isinstance(width, int) and out_features != width):
        raise HParamsError(
            f"inner_params {inner_param!r} maps {in_features} to {out_features} features; WISE edits an FFN output "
            f"projection, which maps the FFN's wider hidden layer back to the model width"
            f"{f' ({width})' if isinstance(width, int) else ''}, e.g. model.layers[N].mlp.down_proj.weight."
        )
    return parent, name, module


@torch.no_grad()
def projection_inputs(model: nn.Module, layer: WISELayer, tok: Any, texts: list[str], batch_size: int = 32,
                      lower: Sequence[nn.Module] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the edited projection for ``texts`` (right padded) and their token mask.

    They depend only on the frozen layers below the edit, so they are computed once and reused.
    ``lower``, the blocks below the edited one, run their MLPs on real tokens only.
    """
    device = input_device(model)
    encoded = tok(list(texts), padding=True, return_tensors="pt", padding_side="right").to(device)
    chunks = [block_calls(model, [layer], {"input_ids": encoded["input_ids"][start:start + batch_size],
                                           "attention_mask": encoded["attention_mask"][start:start + batch_size]},
                          lower)[0][0] for start in range(0, len(texts), batch_size)]
    mask = content_mask(model, encoded["input_ids"], encoded["attention_mask"])
    return torch.cat(chunks), mask.to(chunks[0].device)


def block_inputs(model: nn.Module, block: nn.Module, tok: Any, texts: Sequence[str]) -> list[torch.Tensor]:
    """Hidden states entering ``block`` for each text, computed one text at a time so that the
    values do not depend on which batch asked for them first."""
    device = input_device(model)
    rows = []
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"].to(device)
        rows.append(block_calls(model, [block], {"input_ids": ids})[0][0][0])
    return rows


def find_layer(model: nn.Module) -> Optional[WISELayer]:
    """The WISE layer inside ``model``, if one is attached."""
    return find_wrapper(model, WISELayer)


def _routing_pre_hook(layer: WISELayer):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        layer.token_mask = content_mask(module, ids, kwargs.get("attention_mask"))
        layer.continuing = bool(cached_length(kwargs))
        layer.row_ids = extend_row_ids(layer.row_ids, ids, layer.continuing) if layer.answer_stop else None
        if not layer.continuing:
            layer.cached_choice = None
            anchors = layer.book.anchors
            layer.anchor_hits = None if ids is None or not any(g is not None for g in anchors.groups) else \
                anchors.hits(ids, kwargs.get("attention_mask"), len(layer.thresholds()))

    return hook


def attach(model: nn.Module, inner_param: str, mask_ratio: float, seed: int,
           retrieve: bool = False) -> tuple[WISELayer, bool]:
    """Return the WISE layer at ``inner_param``, creating it on first use (second value: created)."""
    existing = find_layer(model)
    parent, name, module = resolve(model, inner_param)
    if isinstance(module, WISELayer):
        if module.retrieve != retrieve:
            raise HParamsError(
                f"this model's WISE side memory was built with retrieve: {module.retrieve}; the hparams say "
                f"retrieve: {retrieve}. Keep the setting for the life of the memory, or detach it first."
            )
        return module, False
    if existing is not None:
        raise HParamsError(
            f"this model already has a WISE side memory at another module; inner_params {inner_param!r} "
            "differs. Remove it first with wise_plugin.wise.detach(model)."
        )
    layer = WISELayer(module, mask_ratio=mask_ratio, seed=seed, retrieve=retrieve)
    swap_in(model, parent, name, layer, _routing_pre_hook(layer))
    return layer, True


def detach(model: nn.Module) -> bool:
    """Put the original projection back and drop the side memory; False if none was attached."""
    return swap_out(model, WISELayer)
