"""Derived data WISE keeps to avoid recomputing it: everything here can be rebuilt from the model.

``EditCaches`` lives on one ``WISELayer``: the once-per-model setup (prompt prefixes the model
wrote, projection inputs of the irrelevant-text pool), projection inputs of replayed edits, the
hidden states entering the edited block for rehearsed edits, and two facts the fast path checks
once per layer. ``SetupCache`` is held by the caller (the comparison runner holds one) to share the
setup between models with the same weights: the lifelong protocol rebuilds the unedited model for
every chunk, and the setup costs about 13 s on SmolLM2 on a 2-core CPU, which T=1 runs would pay
per edit. Without one, each model keeps its own (``model_setup_cache``), so a host that detaches
the side memory after every edit (``lifelong: false``) does not pay the setup again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Optional

import torch
from torch import nn


class EditCaches:
    """Setup, replay and rehearsal caches of one WISE layer."""

    def __init__(self) -> None:
        self.prefixes: Optional[list[str]] = None  # model-generated prompt prefixes, made once per model
        self.pool_texts: tuple[str, ...] = ()  # the irrelevant-text pool (the reference path tokenises it)
        self.pool_acts: Optional[torch.Tensor] = None  # projection inputs of the irrelevant-text pool
        self.pool_mask: Optional[torch.Tensor] = None
        self.replay_cache: dict[str, torch.Tensor] = {}  # projection inputs of replayed edits
        self.block_inputs: dict[str, torch.Tensor] = {}  # hidden states entering the edited block, per edit of the memory
        self.block_is_additive: Optional[bool] = None  # fast path: block output = rest + projection?
        self.kwargs_shared: Optional[bool] = None  # fast path: first and edited block get the same extra inputs?

    def ready(self) -> bool:
        """Whether the once-per-model setup (prefixes, pool inputs) is in place."""
        return self.prefixes is not None and self.pool_acts is not None

    def snapshot(self) -> dict[str, Any]:
        """What an edit changes here (the rehearsal states of the active memory)."""
        return {"block_inputs": dict(self.block_inputs)}

    def restore(self, state: dict[str, Any]) -> None:
        self.block_inputs = dict(state.get("block_inputs", {}))

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Kept in a checkpoint so a resumed run takes the same path as an uninterrupted one: the
        prefixes, the rehearsal states and whether rehearsed rows may come from them."""
        texts = list(self.block_inputs)
        tensors = {f"block_input.{index}": self.block_inputs[text] for index, text in enumerate(texts)}
        return tensors, {"prefixes": self.prefixes, "block_input_texts": texts, "kwargs_shared": self.kwargs_shared}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                              device: torch.device) -> None:
        self.prefixes = meta["prefixes"]
        self.kwargs_shared = meta.get("kwargs_shared")
        # hidden states in the model's dtype (they enter the edited block); absent in older checkpoints
        self.block_inputs = {text: tensors[f"block_input.{i}"].to(device)
                             for i, text in enumerate(meta.get("block_input_texts", []))}


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> tuple:
    """Name, shape, dtype, sum and absolute sum of every parameter (float64 accumulation)."""
    return tuple(
        (name, tuple(p.shape), str(p.dtype), str(p.device),
         float(p.sum(dtype=torch.float64)), float(p.abs().sum(dtype=torch.float64)))
        for name, p in model.named_parameters()
    )


class SetupCache:
    """Prompt prefixes and pool projection inputs shared between models with the same weights.

    Entries are keyed by a fingerprint of every weight, so a model whose weights differ in any
    tensor sum gets its own setup; the ``keep`` most recent entries are kept. Pass one to
    ``apply_wise_to_model(..., setup_cache=cache)``.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.entries: "OrderedDict[Hashable, tuple[list[str], torch.Tensor, torch.Tensor]]" = OrderedDict()

    @staticmethod
    def key(model: nn.Module, tok: Any, inner_param: str, hparams: Any, pool: tuple[str, ...]) -> Hashable:
        """Everything the prefixes and the inputs of the pool texts ``pool`` depend on."""
        tokenizer = (getattr(tok, "name_or_path", None), len(tok))
        settings = (inner_param, hparams.n_prefixes, tuple(hparams.prefix_lengths), hparams.seed, hash(pool))
        return (type(model).__name__, tokenizer, settings, weights_fingerprint(model))

    def lookup(self, key: Hashable) -> Optional[tuple[list[str], torch.Tensor, torch.Tensor]]:
        """The stored (prefixes, pool inputs, pool mask) for ``key``, or None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return list(entry[0]), entry[1], entry[2]

    def store(self, key: Hashable, prefixes: list[str], pool_acts: torch.Tensor, pool_mask: torch.Tensor) -> None:
        self.entries[key] = (list(prefixes), pool_acts, pool_mask)
        self.entries.move_to_end(key)
        while len(self.entries) > self.keep:
            self.entries.popitem(last=False)


def model_setup_cache(model: nn.Module) -> SetupCache:
    """The ``SetupCache`` kept on ``model`` itself (a plain attribute of the root module, made on
    first use): it outlives side memories that are detached and attached again."""
    cache = model.__dict__.get("_wise_setup_cache")
    if cache is None:
        cache = model.__dict__["_wise_setup_cache"] = SetupCache(keep=1)
    return cache
