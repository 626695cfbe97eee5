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

    def __init__(self, base: nn.Module, mask_ratio: float, seed: int, retrieve: bool = False) -> None:
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
        self.pool_texts: tuple[str, ...] = ()  # the irrelevant-text pool (the reference path tokenises it)
        self.pool_acts: Optional[torch.Tensor] = None  # projection inputs of the irrelevant-text pool
        self.pool_mask: Optional[torch.Tensor] = None
        self.memory: list[tuple[str, str]] = []  # (prompt, target) of every edit, for rehearsal
        self.block_is_additive: Optional[bool] = None  # fast path: block output = rest + projection?
        self.replay_cache: dict[str, torch.Tensor] = {}  # projection inputs of replayed edits, derived data
        self.block_inputs: dict[str, torch.Tensor] = {}  # hidden states entering the edited block, per edit of the group
        self.kwargs_shared: Optional[bool] = None  # fast path: first and edited block get the same extra inputs?
        # WISE-Retrieve: each finished merge group is retired as its own memory with its threshold.
        self.retrieve = retrieve
        self.register_buffer("group_stack", weight.new_zeros((weight.shape[0], 0) if self.conv1d_layout
                                                             else (0, weight.shape[1])), persistent=False)
        self.group_thresholds: list[float] = []
        self.group_start = 0  # edits made before the active group began
        # Top-1 rule among memories above their thresholds: highest score (the paper), or highest
        # score / own threshold, which compares memories whose score scales differ.
        self.route_by = "score"
        # Routing context, refreshed by the model-level pre-hook before every forward.
        self.editing = False
        self.token_mask: Optional[torch.Tensor] = None
        self.continuing = False
        self.cached_choice: Optional[torch.Tensor] = None  # per-row memory index kept during generation
        self.last_scores: Optional[torch.Tensor] = None
        self.last_inputs: Optional[torch.Tensor] = None
        self.step_delta: Optional[torch.Tensor] = None  # W' - W of the current edit iteration
        self.update_buffers: Optional[tuple[Any, ...]] = None  # (norm_constraint, scratch, bounds...) for one edit
        self.probes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # bare rows of the group's edits
        self.hook_handle: Any = None

    # -- projection -----------------------------------------------------------------------------
    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = x @ weight if self.conv1d_layout else nn.functional.linear(x, weight)
        return out if self.base.bias is None else out + self.base.bias

    def _apply_delta(self, x: torch.Tensor, delta_w: torch.Tensor) -> torch.Tensor:
        return x @ delta_w if self.conv1d_layout else nn.functional.linear(x, delta_w)

    def weight_delta(self) -> torch.Tensor:
        """``W' - W`` of the active side memory; one edit iteration computes it once (``step_delta``)."""
        return self.step_delta if self.step_delta is not None else self.side_weight - self.base.weight

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        """||a (W' - W)^T|| per token of the active side memory, in float32."""
        return self._apply_delta(x, self.weight_delta().to(x.dtype)).float().norm(dim=-1)

    def edit_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``a (W' - W)^T`` while editing, keeping the inputs and routing scores for the loss."""
        delta = self._apply_delta(x, self.weight_delta())
        self.last_inputs, self.last_scores = x, delta.float().norm(dim=-1)
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_out = self.base(x)
        if self.editing:
            return base_out + self.edit_delta(x)
        if x.dim() != 3 or not self.thresholds():
            return base_out
        choice, deltas = self._route(x)
        if not bool((choice >= 0).any()):
            return base_out
        if deltas is None:  # decision kept from the prompt: only the chosen memories are computed
            deltas = torch.zeros(*x.shape[:2], len(self.thresholds()), base_out.shape[-1], dtype=x.dtype, device=x.device)
            for memory in choice.unique().tolist():
                if memory >= 0:
                    rows = choice == memory
                    deltas[rows, :, memory] = self._apply_delta(x[rows], self._memory_delta(memory, x.dtype))
        picked = deltas[torch.arange(x.shape[0], device=x.device), :, choice.clamp(min=0)]
        return torch.where((choice >= 0)[:, None, None], base_out + picked, base_out)

    # -- memories and routing ---------------------------------------------------------------------
    def thresholds(self) -> list[float]:
        """Thresholds of the memories inference can route to: retired groups, then the active one."""
        return self.group_thresholds + ([] if self.threshold is None else [self.threshold])

    def _memory_delta(self, memory: int, dtype: torch.dtype) -> torch.Tensor:
        """``W_m - W`` of one memory, in the (in, out) or (out, in) layout of the base weight."""
        if memory == len(self.group_thresholds):
            return (self.side_weight - self.base.weight).to(dtype)
        out_dim = 1 if self.conv1d_layout else 0
        size = self.side_weight.shape[out_dim]
        return self.group_stack.narrow(out_dim, memory * size, size).to(dtype)

    def _all_deltas(self, x: torch.Tensor) -> torch.Tensor:
        """``a (W_m - W)^T`` for every token and memory: shape (batch, length, memories, out)."""
        parts = []
        if self.group_thresholds:
            retired = self._apply_delta(x, self.group_stack.to(x.dtype))
            parts.append(retired.view(*x.shape[:2], len(self.group_thresholds), -1))
        if self.threshold is not None:
            parts.append(self._apply_delta(x, (self.side_weight - self.base.weight).to(x.dtype)).unsqueeze(2))
        return torch.cat(parts, dim=2)

    def _route(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-row memory index (-1: main memory) and the deltas computed to decide it.

        A row goes to the memory with the highest mean score over its real tokens (or, with
        ``route_by == "ratio"``, the highest score over that memory's threshold; with ``"newest"``,
        the most recent memory) among those above their own threshold (top-1). While a KV cache
        grows, the prompt's decision is kept.
        """
        batch, length = x.shape[:2]
        if self.continuing and self.cached_choice is not None and self.cached_choice.shape[0] == batch:
            return self.cached_choice, None
        deltas = self._all_deltas(x)
        scores = deltas.float().norm(dim=-1)  # (batch, length, memories)
        mask = self.token_mask
        if mask is None or mask.shape[0] != batch:
            mask = torch.ones(batch, length, device=x.device)
        mask = mask[:, -length:].to(scores.dtype).unsqueeze(-1)
        rows = (scores * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (batch, memories)
        thresholds = torch.tensor(self.thresholds(), device=rows.device, dtype=rows.dtype)
        above = rows > thresholds
        if self.route_by == "newest":  # later memories were trained to reject earlier edits, not the reverse
            rank = torch.arange(rows.shape[-1], device=rows.device, dtype=rows.dtype).expand_as(rows)
        else:
            rank = rows / thresholds if self.route_by == "ratio" else rows
        best = torch.where(above, rank, torch.full_like(rank, -float("inf"))).argmax(dim=-1)
        self.cached_choice = torch.where(above.any(dim=-1), best, torch.full_like(best, -1))
        return self.cached_choice, deltas

    @torch.no_grad()
    def probe_scores(self) -> float:
        """Smallest current routing score over the stored bare rows (whole row and prompt only)."""
        lowest = float("inf")
        for acts, row_mask, prompt_mask in self.probes:
            scores = self.token_scores(acts.unsqueeze(0))[0]
            for mask in (row_mask, prompt_mask):
                mask = mask.to(device=scores.device, dtype=scores.dtype)
                lowest = min(lowest, float((scores * mask).sum() / mask.sum().clamp(min=1.0)))
        return lowest

    # -- shards, masks, merge -------------------------------------------------------------------
    def _draw_mask(self, shard_index: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + shard_index)
        keep = torch.rand(self.side_weight.shape, generator=generator) < self.mask_ratio
        return keep.to(self.side_weight.device)

    def begin_edit(self) -> None:
        if self.shard_start is None:
            self.shard_start = self.side_weight.detach().clone()

    def end_edit(self) -> None:
        self.update_buffers = self.step_delta = None

    @torch.no_grad()
    def apply_update(self, grad: torch.Tensor, lr: float, norm_constraint: Optional[float]) -> None:
        """One masked step of size ``lr`` along ``-grad``; entries outside the shard's mask are
        left bit-identical.

        Works in buffers kept for the edit: fresh weight-sized tensors in every iteration cost
        more in page faults than the arithmetic on them.
        """
        weight = self.side_weight
        if self.update_buffers is None or self.update_buffers[0] != norm_constraint:
            bounds = () if norm_constraint is None else (self.base.weight - norm_constraint, self.base.weight + norm_constraint)
            self.update_buffers = (norm_constraint, torch.empty_like(weight), *bounds)
        _, stepped, *bounds = self.update_buffers
        torch.add(weight, grad.to(weight.dtype), alpha=-lr, out=stepped)
        if bounds:
            torch.clamp(stepped, bounds[0], bounds[1], out=stepped)
        torch.where(self.mask, stepped, weight, out=weight)

    def finish_edit(self, score: float, act_ratio: float, save_freq: Optional[int], merge_freq: int,
                    merge_alg: str, densities: Optional[float], weights: Optional[float],
                    probe: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> None:
        """Book-keeping after one edit: threshold, shard save and merge.

        With a ``probe`` (the edit's bare row) the threshold is refreshed from the current scores
        of every edit of the group: later edits move the side memory, so scores taken when each
        edit finished go stale.
        """
        if probe is not None:
            self.probes.append(probe)
            score = min(score, self.probe_scores())
            self.min_edit_score = score
        else:
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
        if self.shard_deltas:
            merged = merge_deltas(self.shard_deltas, merge_alg, densities, weights, seed=self.seed + self.shard_index)
            self.side_base.copy_(self.side_base + merged.to(self.side_base.dtype))
            self.side_weight.copy_(self.side_base)
            self.shard_deltas = []
        if self.retrieve and self.threshold is not None:
            self._retire_group()

    @torch.no_grad()
    def _retire_group(self) -> None:
        """WISE-Retrieve: freeze the merged memory with its threshold; the next group starts from W."""
        delta = (self.side_weight - self.base.weight).detach()
        self.group_stack = torch.cat([self.group_stack, delta], dim=1 if self.conv1d_layout else 0)
        self.group_thresholds.append(self.threshold)
        self.side_base.copy_(self.base.weight)
        self.side_weight.copy_(self.base.weight)
        self.threshold = self.min_edit_score = None
        self.group_start = self.edits
        self.probes = []
        self.block_inputs = {}  # rehearsal draws from the active group only

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
            "group_stack": clone(self.group_stack),
            "group_thresholds": list(self.group_thresholds),
            "group_start": self.group_start,
            "probes": list(self.probes),
            "block_inputs": dict(self.block_inputs),
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
        self.group_stack = state["group_stack"].clone()
        self.group_thresholds = list(state["group_thresholds"])
        self.group_start = state["group_start"]
        self.probes = list(state.get("probes", []))
        self.block_inputs = dict(state.get("block_inputs", {}))
        self.cached_choice = None
