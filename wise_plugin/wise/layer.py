"""``WISELayer``: wraps one FFN projection with a side memory, shards and per-row routing."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from wise_plugin.wise.merge import merge_deltas


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores the weight as (in, out) and computes ``x @ W + b``."""
    return type(module).__name__ == "Conv1D"


class WISELayer(nn.Module):
    """Main memory (the frozen base projection) plus a trainable side memory of the same shape.

    Editing trains ``side_weight`` on the entries of the current shard's random mask only. Every
    ``save_freq`` edits the shard's change is stored and a new mask drawn; every ``merge_freq`` edits
    the stored shard changes are TIES-merged into ``side_base``, the starting point of later shards.
    At inference each row goes through the side memory when its routing score, the mean over its
    real tokens of ``||a (W' - W)^T||``, exceeds ``threshold``.
    """

    def __init__(self, base: nn.Module, mask_ratio: float, seed: int) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear) and not _is_conv1d(base):
            raise TypeError(f"WISE needs an nn.Linear or GPT-2 Conv1D projection, got {type(base).__name__}")
        self.base = base
        self.conv1d_layout = _is_conv1d(base)
        for param in base.parameters():
            param.requires_grad_(False)
        weight = base.weight.detach()
        self.side_weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.register_buffer("side_base", weight.clone(), persistent=True)
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.edits = 0  # edits made so far, over the whole life of the layer
        self.shard_index = 0  # index of the shard currently being trained
        self.shard_start: Optional[torch.Tensor] = None  # side_weight when the current shard began
        self.shard_deltas: list[torch.Tensor] = []  # saved shards of the current merge group
        self.mask = self._draw_mask(0)
        self.min_edit_score: Optional[float] = None
        self.threshold: Optional[float] = None
        self.prefixes: Optional[list[str]] = None  # model-generated prompt prefixes, made once per model
        self.pool_acts: Optional[torch.Tensor] = None  # projection inputs of the irrelevant-text pool
        self.pool_mask: Optional[torch.Tensor] = None
        self.memory: list[tuple[str, str]] = []  # (prompt, target) of every edit, for rehearsal
        # Routing context, refreshed by the model-level pre-hook before every forward.
        self.editing = False
        self.token_mask: Optional[torch.Tensor] = None
        self.continuing = False
        self.cached_route: Optional[torch.Tensor] = None
        self.last_scores: Optional[torch.Tensor] = None
        self.hook_handle: Any = None

    # -- projection -----------------------------------------------------------------------------
    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = x @ weight if self.conv1d_layout else nn.functional.linear(x, weight)
        return out if self.base.bias is None else out + self.base.bias

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        """||a (W' - W)^T|| per token, accumulated in float32."""
        delta_w = (self.side_weight - self.base.weight).to(x.dtype)
        delta = x @ delta_w if self.conv1d_layout else nn.functional.linear(x, delta_w)
        return delta.float().norm(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.editing:
            self.last_scores = self.token_scores(x)
            return self._project(x, self.side_weight)
        base_out = self.base(x)
        if self.threshold is None or x.dim() != 3:
            return base_out
        route = self._route(x)
        if not bool(route.any()):
            return base_out
        side_out = self._project(x, self.side_weight)
        return torch.where(route[:, None, None], side_out, base_out)

    def _route(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row choice of the side memory; kept from the prompt while a KV cache grows."""
        batch, length = x.shape[:2]
        if self.continuing and self.cached_route is not None and self.cached_route.shape[0] == batch:
            return self.cached_route
        scores = self.token_scores(x)
        mask = self.token_mask
        if mask is None or mask.shape[0] != batch:
            mask = torch.ones(batch, length, device=x.device)
        mask = mask[:, -length:].to(scores.dtype)
        row = (scores * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        self.cached_route = row > self.threshold
        return self.cached_route

    # -- shards, masks, merge -------------------------------------------------------------------
    def _draw_mask(self, shard_index: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + shard_index)
        keep = torch.rand(self.side_weight.shape, generator=generator) < self.mask_ratio
        return keep.to(self.side_weight.device)

    def begin_edit(self) -> None:
        if self.shard_start is None:
            self.shard_start = self.side_weight.detach().clone()

    @torch.no_grad()
    def apply_update(self, grad: torch.Tensor, lr: float, norm_constraint: Optional[float]) -> None:
        """One masked step of size ``lr`` along ``-grad``; entries outside the shard's mask are
        left bit-identical."""
        stepped = self.side_weight - lr * grad.to(self.side_weight.dtype)
        if norm_constraint is not None:
            base = self.base.weight
            stepped = torch.maximum(torch.minimum(stepped, base + norm_constraint), base - norm_constraint)
        self.side_weight.copy_(torch.where(self.mask, stepped, self.side_weight))

    def finish_edit(self, score: float, act_ratio: float, save_freq: Optional[int], merge_freq: int,
                    merge_alg: str, densities: Optional[float], weights: Optional[float]) -> None:
        """Book-keeping after one edit: threshold, shard save and merge."""
        self.min_edit_score = score if self.min_edit_score is None else min(self.min_edit_score, score)
        self.threshold = act_ratio * self.min_edit_score
        self.edits += 1
        if save_freq is not None and self.edits % save_freq == 0:
            self._save_shard()
        if save_freq is not None and self.edits % merge_freq == 0:
            self._merge(merge_alg, densities, weights)

    @torch.no_grad()
    def _save_shard(self) -> None:
        assert self.shard_start is not None
        self.shard_deltas.append(self.side_weight.detach() - self.shard_start)
        self.shard_index += 1
        self.mask = self._draw_mask(self.shard_index)
        self.shard_start = None

    @torch.no_grad()
    def _merge(self, merge_alg: str, densities: Optional[float], weights: Optional[float]) -> None:
        if not self.shard_deltas:
            return
        merged = merge_deltas(self.shard_deltas, merge_alg, densities, weights)
        self.side_base.copy_(self.side_base + merged.to(self.side_base.dtype))
        self.side_weight.copy_(self.side_base)
        self.shard_deltas = []

    # -- state for restore handles and checkpoints ------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything an edit can change."""
        clone = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        return {
            "side_weight": clone(self.side_weight),
            "side_base": clone(self.side_base),
            "shard_start": clone(self.shard_start),
            "shard_deltas": [clone(d) for d in self.shard_deltas],
            "mask": clone(self.mask),
            "edits": self.edits,
            "shard_index": self.shard_index,
            "min_edit_score": self.min_edit_score,
            "threshold": self.threshold,
            "memory": list(self.memory),
        }

    @torch.no_grad()
    def restore(self, state: dict[str, Any]) -> None:
        self.side_weight.copy_(state["side_weight"])
        self.side_base.copy_(state["side_base"])
        self.shard_start = None if state["shard_start"] is None else state["shard_start"].clone()
        self.shard_deltas = [d.clone() for d in state["shard_deltas"]]
        self.mask = state["mask"].clone()
        self.edits = state["edits"]
        self.shard_index = state["shard_index"]
        self.min_edit_score = state["min_edit_score"]
        self.threshold = state["threshold"]
        self.memory = list(state["memory"])
        self.cached_route = None
