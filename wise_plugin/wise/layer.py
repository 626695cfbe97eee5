"""``WISELayer``: wraps one FFN projection with side memories and routes each row to one of them.

The routing score lives here, in ``token_scores`` and ``row_scores``: inference routing, the
training loss and the thresholds all read it through these two functions. The book-keeping of
shards, merges and thresholds is in :mod:`wise_plugin.wise.memory`; caches in
:mod:`wise_plugin.wise.caches`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from wise_plugin.core.anchors import answer_gate
from wise_plugin.core.modules import tensor_bytes
from wise_plugin.wise.caches import EditCaches
from wise_plugin.wise.memory import MemoryBook, Probe
from wise_plugin.wise.merge import merge_deltas
from wise_plugin.wise.retired import RetiredMemories


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores the weight as (in, out) and computes ``x @ W + b``."""
    return type(module).__name__ == "Conv1D"


def token_scores(delta_out: torch.Tensor) -> torch.Tensor:
    """Routing score of each token: the norm of the side memory's change to the projection output,
    ``||a (W' - W)^T||``, in float32."""
    return delta_out.float().norm(dim=-1)


def row_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Routing score of each row: the mean token score over its real tokens (``mask``).

    ``scores`` is (rows, length) or (rows, length, memories); ``mask`` is (rows, length).
    """
    mask = mask.to(device=scores.device, dtype=scores.dtype)
    if scores.dim() == 3:
        mask = mask.unsqueeze(-1)
    return (scores * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class WISELayer(nn.Module):
    """Main memory (the frozen base projection) plus side memories of the same shape.

    Editing trains ``side_weight`` on the entries of the current shard's random mask only; the
    ``book`` (:class:`MemoryBook`) says which shard, when to save and merge, and each memory's
    threshold. Merged shard changes accumulate in ``side_base``, the starting point of later
    shards; with WISE-Retrieve each finished memory's change is kept, sparse and compact, in
    ``retired`` (:class:`~wise_plugin.wise.retired.RetiredMemories`). At inference each row goes
    through the memory whose routing score (``row_scores``) is above its threshold (top-1 by
    ``route_by``), else through the main memory alone; a memory whose subject anchors the row does
    not name is neither a candidate nor scored, so the cost follows the anchors a row hits, not
    the number of memories. With ``answer_stop`` the chosen memory is silent from the position
    where one of its edits' answers has been written after that edit's subject
    (:func:`wise_plugin.core.anchors.answer_gate`).
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
        self.book = MemoryBook(weight.shape, weight.device, mask_ratio, seed)
        self.caches = EditCaches()
        # WISE-Retrieve: each finished memory is retired with its threshold (kept in the book).
        self.retrieve = retrieve
        self.retired = RetiredMemories(weight.shape, weight.device)
        # Top-1 rule among memories above their thresholds: highest score (the paper), highest
        # score / own threshold, which compares memories whose score scales differ, or the newest.
        self.route_by = "score"
        # Routing context, refreshed by the model-level pre-hook before every forward.
        self.editing = False
        self.token_mask: Optional[torch.Tensor] = None
        self.continuing = False
        self.cached_choice: Optional[torch.Tensor] = None  # per-row memory index kept during generation
        self.anchor_hits: Optional[torch.Tensor] = None  # (rows, memories): row names a subject of the memory
        self.anchor_route = False  # a row naming a memory's subject goes there even below its threshold
        self.answer_stop = False  # a memory is silent after one of its answers is written in the row
        self.row_ids: Optional[torch.Tensor] = None  # token ids of the rows so far (the prompt, then generated ones)
        self.last_scores: Optional[torch.Tensor] = None
        self.last_inputs: Optional[torch.Tensor] = None
        self.step_delta: Optional[torch.Tensor] = None  # W' - W of the current edit iteration
        self.update_buffers: Optional[tuple[Any, ...]] = None  # (norm_constraint, scratch, bounds...) for one edit
        self.hook_handle: Any = None

    # -- projection -----------------------------------------------------------------------------
    def project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x`` through a projection of the base layer's layout with ``weight`` (and its bias)."""
        out = x @ weight if self.conv1d_layout else nn.functional.linear(x, weight)
        return out if self.base.bias is None else out + self.base.bias

    def apply_delta(self, x: torch.Tensor, delta_w: torch.Tensor) -> torch.Tensor:
        """``x (W' - W)^T``: the change a side memory makes to the projection output."""
        return x @ delta_w if self.conv1d_layout else nn.functional.linear(x, delta_w)

    def weight_delta(self) -> torch.Tensor:
        """``W' - W`` of the active side memory; one edit iteration computes it once (``step_delta``)."""
        return self.step_delta if self.step_delta is not None else self.side_weight - self.base.weight

    def token_scores(self, x: torch.Tensor, delta_w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Routing score of each token of ``x`` against the active side memory, or the change ``delta_w``."""
        delta_w = self.weight_delta() if delta_w is None else delta_w
        return token_scores(self.apply_delta(x, delta_w.to(x.dtype)))

    def edit_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``a (W' - W)^T`` while editing, keeping the inputs and routing scores for the loss."""
        delta = self.apply_delta(x, self.weight_delta())
        self.last_inputs, self.last_scores = x, token_scores(delta)
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_out = self.base(x)
        if self.editing:
            return base_out + self.edit_delta(x)
        if x.dim() != 3 or not self.thresholds():
            return base_out
        choice, computed = self._route(x)
        if not bool((choice >= 0).any()):
            return base_out
        out = base_out.clone()
        gate = answer_gate(self.book.answers, self.row_ids, choice, x.shape[1]) if self.answer_stop else None
        for memory in choice.unique().tolist():
            if memory < 0:
                continue
            rows = choice == memory
            if memory in computed:  # scored while routing: reuse the change it made to the candidates
                scored_rows, delta = computed[memory]
                delta = delta[rows[scored_rows]]
            else:  # decision kept from the prompt: only the chosen memory is computed
                delta = self.apply_delta(x[rows], self._memory_delta(memory, x.dtype))
            out[rows] = out[rows] + (delta if gate is None else delta * gate[rows].to(delta))
        return out

    # -- memories and routing ---------------------------------------------------------------------
    def thresholds(self) -> list[float]:
        """Thresholds of the memories inference can route to: retired ones, then the active one."""
        return self.book.thresholds()

    def _memory_delta(self, memory: int, dtype: torch.dtype) -> torch.Tensor:
        """``W_m - W`` of one memory, in the (in, out) or (out, in) layout of the base weight."""
        if memory == len(self.retired):
            return (self.side_weight - self.base.weight).to(dtype)
        # retired memories are plain tensors, not buffers: follow the layer when the model moves
        return self.retired.delta(memory, dtype).to(self.side_weight.device)

    def _route(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """Per-row memory index (-1: main memory), and for each memory scored, the rows it was
        scored on and its change to their outputs.

        A row goes to the memory with the highest routing score (or, with ``route_by == "ratio"``,
        the highest score over that memory's threshold; with ``"newest"``, the most recent memory)
        among those above their own threshold (top-1) whose subject anchors the row names (see
        :mod:`wise_plugin.core.anchors`; memories without anchors are open). With ``anchor_route``
        the anchor alone admits a row to an anchored memory, whatever its score. Only candidates, the
        (row, memory) pairs the anchors allow, are scored. While a KV cache grows, the prompt's
        decision is kept.
        """
        batch, length = x.shape[:2]
        if self.continuing and self.cached_choice is not None and self.cached_choice.shape[0] == batch:
            return self.cached_choice, {}
        thresholds = torch.tensor(self.thresholds(), device=x.device, dtype=torch.float32)
        candidates = torch.ones(batch, thresholds.numel(), dtype=torch.bool, device=x.device)
        hits = self.anchor_hits
        if hits is not None and hits.shape != candidates.shape:  # not from this call's rows: no anchor gating
            hits = None
        if hits is not None:  # subject anchors gate their memories
            candidates &= hits.to(x.device)
        mask = self.token_mask
        if mask is None or mask.shape[0] != batch:
            mask = torch.ones(batch, length, device=x.device)
        mask = mask[:, -length:]
        scores = torch.full(candidates.shape, -float("inf"), device=x.device)
        computed = {}
        for memory in candidates.any(dim=0).nonzero().flatten().tolist():
            rows = candidates[:, memory]
            delta = self.apply_delta(x[rows], self._memory_delta(memory, x.dtype))
            scores[rows, memory] = row_scores(token_scores(delta), mask[rows])
            computed[memory] = (rows, delta)
        above = candidates & (scores > thresholds)
        if self.anchor_route and hits is not None:
            above |= candidates & self.book.anchors.anchored(thresholds.numel()).to(x.device)
        if self.route_by == "newest":  # later memories were trained to reject earlier edits, not the reverse
            rank = torch.arange(scores.shape[-1], device=x.device, dtype=scores.dtype).expand_as(scores)
        else:
            rank = scores / thresholds if self.route_by == "ratio" else scores
        best = torch.where(above, rank, torch.full_like(rank, -float("inf"))).argmax(dim=-1)
        self.cached_choice = torch.where(above.any(dim=-1), best, torch.full_like(best, -1))
        return self.cached_choice, computed

    @torch.no_grad()
    def probe_scores(self, probes: list[Probe], delta_w: Optional[torch.Tensor] = None) -> float:
        """Smallest current routing score over stored bare rows (whole row and prompt only), against
        the active side memory or the change ``delta_w``."""
        lowest = float("inf")
        for acts, row_mask, prompt_mask in probes:
            scores = self.token_scores(acts.unsqueeze(0), delta_w)
            for mask in (row_mask, prompt_mask):
                lowest = min(lowest, float(row_scores(scores, mask.unsqueeze(0))[0]))
        return lowest

    # -- editing, shards, merge -----------------------------------------------------------------
    @property
    def mask(self) -> torch.Tensor:
        """The current shard's gradient mask."""
        return self.book.mask

    def begin_edit(self) -> None:
        if self.book.shard_start is None:
            self.book.shard_start = self.side_weight.detach().clone()

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
        torch.where(self.book.mask, stepped, weight, out=weight)

    def finish_edit(self, score: float, act_ratio: float, save_freq: Optional[int], merge_freq: int,
                    merge_alg: str, densities: Optional[float], weights: Optional[float],
                    probe: Optional[Probe] = None, close_memory: bool = False) -> None:
        """After one edit: the threshold (see ``MemoryBook.record_edit``), then shard save and merge.
        ``close_memory`` saves and merges now, before the next multiple of ``merge_freq`` (a memory
        whose edits no longer fit the row budget, see ``wise.main._memory_full``)."""
        book = self.book
        book.record_edit(score, act_ratio, probe, self.probe_scores)
        if save_freq is not None and (book.edits % save_freq == 0 or close_memory):
            book.save_shard(self.side_weight)
        if save_freq is not None and (book.edits % merge_freq == 0 or close_memory):
            self._merge(merge_alg, densities, weights, act_ratio)

    @torch.no_grad()
    def _merge(self, merge_alg: str, densities: Optional[float], weights: Optional[float],
               act_ratio: float = 1.0) -> None:
        book = self.book
        if book.shard_deltas:
            merged = merge_deltas(book.shard_deltas, merge_alg, densities, weights, seed=book.seed + book.shard_index)
            self.side_base.copy_(self.side_base + merged.to(self.side_base.dtype))
            self.side_weight.copy_(self.side_base)
            book.shard_deltas = []
        if self.retrieve and book.threshold is not None:
            self._retire_group(act_ratio)

    @torch.no_grad()
    def _retire_group(self, act_ratio: float = 1.0) -> None:
        """WISE-Retrieve: freeze the merged memory with its threshold; the next memory starts from W.

        A memory kept as a low-rank approximation (``memory_rank``) scores its edits a little lower
        than the exact change did: its threshold is lowered to ``act_ratio`` x the lowest score of
        its stored bare rows under the kept change, so every edit that routed before still does."""
        exact = self.retired.add((self.side_weight - self.base.weight).detach())
        book = self.book
        if not exact and book.probes and book.threshold is not None:
            kept = self.retired.delta(len(self.retired) - 1, self.side_weight.dtype)
            book.threshold = min(book.threshold, act_ratio * self.probe_scores(book.probes, kept))
        self.side_base.copy_(self.base.weight)
        self.side_weight.copy_(self.base.weight)
        self.book.retire()
        self.caches.block_inputs = {}  # rehearsal draws from the active memory only

    # -- what the edits cost in memory -------------------------------------------------------------
    def footprint(self) -> dict[str, int]:
        """Bytes this layer holds beyond the base projection: ``kept``, what the edits need (retired
        memories, the active memory and its shard state, stored bare rows), and ``caches``, what is
        rebuilt from the model on demand (irrelevant-row and replay inputs, rehearsal states, dense
        copies of recently used memories, the update scratch buffers)."""
        book, caches = self.book, self.caches
        kept = self.retired.nbytes() + tensor_bytes(self.side_weight, self.side_base, book.mask, book.shard_start,
                                                    *book.shard_deltas, *(t for probe in book.probes for t in probe))
        cached = self.retired.cache_nbytes() + tensor_bytes(
            caches.pool_acts, caches.pool_mask, *caches.replay_cache.values(), *caches.block_inputs.values(),
            *(t for t in (self.update_buffers or ())[1:] if isinstance(t, torch.Tensor)))
        return {"kept": kept, "caches": cached}

    # -- state for restore handles and checkpoints ------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything an edit can change: weights, book and rehearsal states."""
        return {"side_weight": self.side_weight.detach().clone(), "side_base": self.side_base.detach().clone(),
                "retired": self.retired.state(),
                **self.book.snapshot(), **self.caches.snapshot()}

    @torch.no_grad()
    def restore(self, state: dict[str, Any]) -> None:
        self.side_weight.copy_(state["side_weight"])
        self.side_base.copy_(state["side_base"])
        self.retired.restore(state["retired"])
        self.book.restore(state)
        self.caches.restore(state)
        self.cached_choice = None

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON fields of the layer's weights and routing settings."""
        tensors = {"side_weight": self.side_weight.detach(), "side_base": self.side_base.detach()}
        tensors.update(self.retired.checkpoint_tensors())
        meta = {"shape": list(self.side_weight.shape), "dtype": str(self.side_weight.dtype).removeprefix("torch."),
                "retrieve": self.retrieve, "route_by": self.route_by, "anchor_route": self.anchor_route,
                "answer_stop": self.answer_stop, "retired": len(self.retired)}
        return tensors, meta

    @torch.no_grad()
    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        cast = lambda name: tensors[name].to(device=self.side_weight.device, dtype=self.side_weight.dtype)  # noqa: E731
        self.side_weight.copy_(cast("side_weight"))
        self.side_base.copy_(cast("side_base"))
        legacy = cast("group_stack") if "group_stack" in tensors else None  # dense, before sparse memories
        self.retired.load_checkpoint_tensors(tensors, meta.get("retired", 0), legacy, self.conv1d_layout)
        self.route_by = meta.get("route_by", "score")  # checkpoints before route_by routed by score
        # a loaded model routes as the saved one did even before any edit call sets these again
        # (checkpoints written before they were saved: off, as their edit calls may have left them)
        self.anchor_route = bool(meta.get("anchor_route", False))
        self.answer_stop = bool(meta.get("answer_stop", False))
        self.cached_choice = None
