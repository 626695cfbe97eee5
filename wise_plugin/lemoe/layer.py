"""The LEMoE adaptor: an FFN module plus a bank of small experts picked by a KV-anchor router.

``h(x) = FFN(x) + lambda * f_i(x)`` with ``i = argmax_i softmax_i(k_i . v)`` for the whole
input (one expert per sequence, not per token), ``v = W_up SiLU(W_down e)`` and ``e`` the mean
of the input's token embeddings. With the locality gate on, a sequence whose cosine to its
chosen key is below that key's calibrated threshold gets ``FFN(x)`` alone, bit for bit.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from wise_plugin.core.anchors import AnchorIndex, AnswerIndex, answer_gate
from wise_plugin.core.modules import tensor_bytes


class Expert(nn.Module):
    """A small FFN ``W_out SiLU(W_in x)``; ``W_out`` starts at zero so a new expert adds nothing."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(hidden, width, bias=False)
        self.w_out = nn.Linear(width, hidden, bias=False)
        nn.init.zeros_(self.w_out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.silu(self.w_in(x)))


class Router(nn.Module):
    """Query projection of the KV-anchor router: ``v = W_up SiLU(W_down e)``."""

    def __init__(self, hidden: int, width: int, key_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, width)
        self.up = nn.Linear(width, key_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.up(F.silu(self.down(pooled)))


def pool(embeddings: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of the token vectors of each row over its real (unpadded) tokens."""
    if mask is None:
        return embeddings.mean(dim=1)
    weights = mask.to(embeddings.dtype).unsqueeze(-1)
    return (embeddings * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class LEMoELayer(nn.Module):
    """Wraps the FFN ``base``; experts, keys, router and per-expert records live on the module.

    ``pooled`` (the mean input embedding of each row of the current forward pass) is set by a
    forward pre-hook on the whole model, see :func:`wise_plugin.lemoe.model.attach`.
    """

    def __init__(self, base: nn.Module, hidden: int, expert_width: int, router_hidden: int, key_dim: int,
                 lambda_: float, seed: int, device: torch.device) -> None:
        super().__init__()
        self.base = base
        self.hidden, self.expert_width, self.lambda_ = hidden, expert_width, lambda_
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the router starts the same for a given seed
        self.router = Router(hidden, router_hidden, key_dim).to(device)
        torch.random.set_rng_state(generator_state)
        self.seed = seed
        self.experts = nn.ModuleList()
        self.keys = nn.ParameterList()
        self.edits: list[list[tuple[Any, ...]]] = []  # (prompt, target, subject) of each expert (older: no subject)
        self.thresholds: list[Optional[float]] = []  # locality-gate cosine threshold of each expert
        self.open = False  # whether the last expert still takes edits
        self.gate = False
        self.anchor_embeds = torch.zeros(0, hidden, device=device)  # pooled embedding of each stored edit
        self.anchor_expert = torch.zeros(0, dtype=torch.long, device=device)  # its expert
        self.pool_embeds: Optional[torch.Tensor] = None  # pooled embeddings of irrelevant texts
        self.planner_state: dict[str, Any] = {}
        self.planner_centroids: Optional[torch.Tensor] = None
        self.pooled: Optional[torch.Tensor] = None
        self.anchors = AnchorIndex()  # subject anchors of each expert's edits (subject_anchor)
        self.anchor_hits: Optional[torch.Tensor] = None  # (rows, experts) of the current forward, set by the hook
        self.anchor_route = False  # with the gate: a row naming an expert's subject passes the gate of that expert
        self.answers = AnswerIndex()  # subjects and new answers of each expert's edits (answer_stop)
        self.answer_stop = False  # an expert is silent after one of its answers is written in the row
        self.row_ids: Optional[torch.Tensor] = None  # token ids of the rows so far (the prompt, then generated ones)
        self.continuing = False
        self.cached_choice: Optional[torch.Tensor] = None
        self.last_choice: Optional[torch.Tensor] = None
        self.hook_handle: Any = None
        self.experts_off = False  # capture of the original activations
        self.force_expert: Optional[int] = None  # training without the cached forward: every row uses it

    @property
    def device(self) -> torch.device:
        return self.anchor_embeds.device

    @property
    def n_edits(self) -> int:
        return sum(len(e) for e in self.edits)

    def footprint(self) -> dict[str, int]:
        """Bytes held beyond the base module: ``kept`` (experts, keys, router, the stored edits'
        pooled embeddings) and ``caches`` (pooled embeddings of the irrelevant texts, planner
        centroids), as WISE's ``footprint``."""
        params = [p for module in (self.experts, self.keys, self.router) for p in module.parameters()]
        return {"kept": tensor_bytes(*params, self.anchor_embeds, self.anchor_expert),
                "caches": tensor_bytes(self.pool_embeds, self.planner_centroids)}

    def new_expert(self) -> int:
        """Open a fresh expert with an untrained key; returns its index."""
        generator = torch.Generator().manual_seed(self.seed + 7919 * (len(self.experts) + 1))
        expert = Expert(self.hidden, self.expert_width)
        bound = 1.0 / self.hidden ** 0.5
        with torch.no_grad():
            expert.w_in.weight.copy_(torch.empty_like(expert.w_in.weight).uniform_(-bound, bound, generator=generator))
        self.experts.append(expert.to(self.device))
        self.keys.append(nn.Parameter(torch.zeros(self.router.up.out_features, device=self.device)))
        self.edits.append([])
        self.thresholds.append(None)
        self.open = True
        return len(self.experts) - 1

    def freeze(self, index: int) -> None:
        """Stop training expert ``index`` and its key for good."""
        for param in self.experts[index].parameters():
            param.requires_grad_(False)
        self.keys[index].requires_grad_(False)
        if index == len(self.experts) - 1:
            self.open = False

    def key_matrix(self) -> torch.Tensor:
        return torch.stack(list(self.keys)) if len(self.keys) else torch.zeros(0, self.router.up.out_features,
                                                                                 device=self.device)

    def route(self, pooled: torch.Tensor, hits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen expert, or -1 for the original FFN only; cosine to its key) of each row.

        ``hits`` (rows, experts), from subject anchors: a row may only go to an expert one of whose
        edits' subjects it names (see :mod:`wise_plugin.core.anchors`); no such expert, no expert.
        With ``anchor_route``, naming the chosen expert's subject also opens its locality gate.
        """
        keys = self.key_matrix()
        if keys.shape[0] == 0:
            return torch.full((pooled.shape[0],), -1, dtype=torch.long, device=pooled.device), pooled.new_zeros(pooled.shape[0])
        query = self.router(pooled.to(keys.dtype))
        logits = query @ keys.T
        allowed = None if hits is None or hits.shape != logits.shape else hits.to(logits.device)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        choice = torch.softmax(logits, dim=-1).argmax(dim=-1)
        cosine = F.cosine_similarity(query, keys[choice], dim=-1)
        if allowed is not None:
            choice = torch.where(allowed.any(dim=-1), choice, torch.full_like(choice, -1))
        if self.gate:
            limits = torch.tensor([float("-inf") if t is None else t for t in self.thresholds],
                                  device=cosine.device, dtype=cosine.dtype)
            passes = cosine >= limits[choice]
            if self.anchor_route and allowed is not None:  # the row names a subject of its anchored expert
                named = allowed & self.anchors.anchored(keys.shape[0]).to(allowed.device)
                passes |= (choice >= 0) & named.gather(1, choice.clamp(min=0).unsqueeze(1)).squeeze(1)
            choice = torch.where(passes, choice, torch.full_like(choice, -1))
        return choice, cosine

    def expert_delta(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """``lambda * f_choice(x)`` per row (zero rows where choice is -1)."""
        delta = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for index in torch.unique(choice).tolist():
            if index < 0:
                continue
            rows = choice == index
            delta[rows] = self.experts[index](x[rows].float())
        return self.lambda_ * delta

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.base(x, *args, **kwargs)
        if self.experts_off or not len(self.experts) or x.dim() != 3:
            return out
        if self.force_expert is not None:
            choice = torch.full((x.shape[0],), self.force_expert, dtype=torch.long, device=x.device)
        elif self.continuing and self.cached_choice is not None and self.cached_choice.shape[0] == x.shape[0]:
            choice = self.cached_choice  # generation with a KV cache: keep the prompt's expert
        else:
            pooled = self.pooled
            if pooled is None or pooled.shape[0] != x.shape[0]:
                pooled = x.mean(dim=1)  # called outside the model (no hook): fall back to the layer input
            with torch.no_grad():
                choice, _ = self.route(pooled.to(self.device), self.anchor_hits)
            self.cached_choice = choice
        self.last_choice = choice
        if bool((choice < 0).all()):
            return out
        hidden = out[0] if isinstance(out, tuple) else out
        delta = self.expert_delta(x, choice.to(x.device))
        gate = answer_gate(self.answers, self.row_ids, choice, x.shape[1]) \
            if self.answer_stop and self.force_expert is None else None
        hidden = hidden + (delta if gate is None else delta * gate.to(delta)).to(hidden.dtype)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def snapshot(self) -> dict[str, Any]:
        """What one host call may change: frozen experts never change, so only counters, the open
        expert, the router and the records are copied."""
        last = len(self.experts) - 1
        return {
            "n_experts": len(self.experts), "open": self.open,
            "open_expert": ({k: v.detach().clone() for k, v in self.experts[last].state_dict().items()}
                            if self.open else None),
            "open_key": self.keys[last].detach().clone() if self.open else None,
            "router": {k: v.detach().clone() for k, v in self.router.state_dict().items()},
            "edits": [list(e) for e in self.edits], "thresholds": list(self.thresholds),
            "anchor_embeds": self.anchor_embeds.clone(), "anchor_expert": self.anchor_expert.clone(),
            "planner_state": dict(self.planner_state), "anchors": self.anchors.state(),
            "answers": self.answers.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Undo everything since ``snapshot``."""
        n = state["n_experts"]
        while len(self.experts) > n:
            del self.experts[len(self.experts) - 1]
        if len(self.keys) > n:
            self.keys = nn.ParameterList(list(self.keys)[:n])
        if state["open"]:
            self.experts[n - 1].load_state_dict(state["open_expert"])
            with torch.no_grad():
                self.keys[n - 1].copy_(state["open_key"])
            for param in self.experts[n - 1].parameters():
                param.requires_grad_(True)
            self.keys[n - 1].requires_grad_(True)
        self.open = state["open"]
        self.router.load_state_dict(state["router"])
        self.edits = [list(e) for e in state["edits"]]
        self.thresholds = list(state["thresholds"])
        self.anchor_embeds, self.anchor_expert = state["anchor_embeds"], state["anchor_expert"]
        self.planner_state = dict(state["planner_state"])
        self.anchors = AnchorIndex.from_state(state["anchors"])
        self.answers = AnswerIndex.from_state(state.get("answers"))
