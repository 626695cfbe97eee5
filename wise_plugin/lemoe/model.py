"""Finding the FFN named by ``layer``, swapping the LEMoE adaptor in and out, and the cached
forward pass used in training (frozen lower blocks run once per edit, not once per step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from wise_plugin.hparams import HParamsError
from wise_plugin.core.anchors import extend_row_ids
from wise_plugin.lemoe.layer import LEMoELayer, pool
from wise_plugin.core.modules import (StopForward, UpperStack, cached_length, find_wrapper, input_device, locate,
                                      swap_in, swap_out, upper_stack)

__all__ = ["attach", "detach", "find_layer", "resolve", "pooled_embeddings", "CachedForward", "input_device"]


def resolve(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent module, attribute name, module) of the FFN at ``path``, with a clear error if absent."""
    parent, name, module = locate(model, path, "LEMoE layer",
                                  " Set layer to the FFN of one block, e.g. 'model.layers[17].mlp'.")
    if not any(isinstance(p, torch.Tensor) for p in module.parameters()):
        raise HParamsError(f"LEMoE layer {path!r} is a {type(module).__name__} without weights; name the block's FFN.")
    return parent, name, module


def _widths(module: nn.Module, hidden: int) -> tuple[int, int]:
    """(input, output) width of the wrapped module and the width of a 'full' (FFN-sized) expert."""
    first = next((m for m in module.modules() if isinstance(m, nn.Linear) and m.in_features == hidden), None)
    return hidden, (first.out_features if first is not None else 4 * hidden)


def find_layer(model: nn.Module) -> Optional[LEMoELayer]:
    """The LEMoE adaptor inside ``model``, if one is attached."""
    return find_wrapper(model, LEMoELayer)


def _routing_pre_hook(layer: LEMoELayer, embeddings: nn.Module):
    """Before every model call: pooled input embeddings for routing, and whether this call
    continues a cached generation (then the prompt's expert choice is kept)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        layer.continuing = bool(cached_length(kwargs))
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        layer.row_ids = extend_row_ids(layer.row_ids, ids, layer.continuing) if layer.answer_stop else None
        if layer.continuing:
            return
        layer.cached_choice = None
        mask = kwargs.get("attention_mask")
        embeds = kwargs.get("inputs_embeds")
        with torch.no_grad():
            if embeds is None and ids is not None:
                embeds = embeddings(ids)
            layer.pooled = None if embeds is None else pool(embeds.float(), None if mask is None or mask.dim() != 2 else mask)
        groups = layer.anchors.groups
        layer.anchor_hits = None if ids is None or not any(g is not None for g in groups) else \
            layer.anchors.hits(ids, mask if mask is not None and mask.dim() == 2 else None, len(layer.experts))

    return hook


def attach(model: nn.Module, path: str, expert_kind: str, rank: int, router_hidden: int, key_dim: int,
           lambda_: float, seed: int) -> tuple[LEMoELayer, bool]:
    """Return the LEMoE adaptor at ``path``, creating it on first use (second value: created)."""
    existing = find_layer(model)
    parent, name, module = resolve(model, path)
    if isinstance(module, LEMoELayer):
        return module, False
    if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)) or not any(True for _ in module.children()):
        raise HParamsError(f"layer {path!r} is a single {type(module).__name__}; LEMoE adds experts beside a whole "
                           "FFN block: name the block that holds it, e.g. 'model.layers[17].mlp'.")
    if existing is not None:
        raise HParamsError(
            f"this model already has a LEMoE adaptor at another module; layer {path!r} differs. "
            "Remove it first with wise_plugin.lemoe.detach(model)."
        )
    embeddings = model.get_input_embeddings()
    hidden = embeddings.embedding_dim
    _, ffn_width = _widths(module, hidden)
    width = ffn_width if expert_kind == "full" else rank
    layer = LEMoELayer(module, hidden, width, router_hidden, key_dim, lambda_, seed, input_device(model))
    swap_in(model, parent, name, layer, _routing_pre_hook(layer, embeddings))
    return layer, True


def detach(model: nn.Module) -> bool:
    """Put the original FFN back and drop every expert; False if no adaptor was attached."""
    return swap_out(model, LEMoELayer)


@torch.no_grad()
def pooled_embeddings(model: nn.Module, tok: Any, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Mean input-token embedding of each text, exactly as the routing hook computes it."""
    embeddings = model.get_input_embeddings()
    out = []
    for start in range(0, len(texts), batch_size):
        encoded = tok(list(texts[start:start + batch_size]), padding=True, return_tensors="pt").to(embeddings.weight.device)
        out.append(pool(embeddings(encoded["input_ids"]).float(), encoded["attention_mask"]))
    if not out:
        return torch.zeros(0, embeddings.embedding_dim, device=embeddings.weight.device)
    return torch.cat(out)


@dataclass
class _Captured:
    x: torch.Tensor  # input of the adapted FFN
    block_out: torch.Tensor  # output of its block with the original FFN
    upper_args: tuple  # how the next block was called (hidden states replaced in each step)
    upper_kwargs: dict
    hidden_as_kwarg: bool


class CachedForward:
    """Logits of training rows as a function of the open expert, running only the blocks above
    the adapted one: the block's output is ``original output + lambda * expert(x)`` because the FFN
    output is added to the residual stream. Falls back to the whole model when the layout is
    not recognised."""

    def __init__(self, model: nn.Module, layer: LEMoELayer, path: str, inputs: dict[str, torch.Tensor]) -> None:
        self.model, self.layer, self.inputs = model, layer, inputs
        self.stack: Optional[UpperStack] = upper_stack(model, path)
        self.captured = self._capture() if self.stack is not None else None

    @torch.no_grad()
    def _capture(self) -> _Captured:
        store: dict[str, Any] = {}
        blocks = self.stack.blocks

        def grab_x(module: nn.Module, args: tuple) -> None:
            store["x"] = args[0].detach()

        def grab_out(module: nn.Module, args: tuple, output: Any) -> None:
            store["out"] = (output[0] if isinstance(output, tuple) else output).detach()
            if len(blocks) == 1:
                raise StopForward

        def grab_next(module: nn.Module, args: tuple, kwargs: dict) -> None:
            store["args"], store["kwargs"] = args, dict(kwargs)
            raise StopForward

        handles = [self.layer.register_forward_pre_hook(grab_x), blocks[0].register_forward_hook(grab_out)]
        if len(blocks) > 1:
            handles.append(blocks[1].register_forward_pre_hook(grab_next, with_kwargs=True))
        bypass, self.layer.experts_off = getattr(self.layer, "experts_off", False), True
        try:
            self.model(**self.inputs, use_cache=False)
        except StopForward:
            pass
        finally:
            self.layer.experts_off = bypass
            for handle in handles:
                handle.remove()
        args, kwargs = store.get("args", ()), store.get("kwargs", {})
        as_kwarg = not args and "hidden_states" in kwargs
        kwargs.pop("hidden_states", None)
        return _Captured(store["x"], store["out"], tuple(args[1:]), kwargs, as_kwarg)

    def logits(self, expert_index: int, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits at (``rows``, ``positions``) when every row uses expert ``expert_index``."""
        if self.captured is None:
            self.layer.force_expert = expert_index
            try:
                return self.model(**self.inputs, use_cache=False).logits[rows, positions]
            finally:
                self.layer.force_expert = None
        c = self.captured
        expert = self.layer.experts[expert_index]
        hidden = c.block_out + (self.layer.lambda_ * expert(c.x.float())).to(c.block_out.dtype)
        for block in self.stack.blocks[1:]:
            out = block(hidden_states=hidden, **c.upper_kwargs) if c.hidden_as_kwarg else block(hidden, *c.upper_args, **c.upper_kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.stack.head(self.stack.norm(hidden[rows, positions]))
