"""Merging knowledge shards with peft's task-vector merge utilities."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from peft.utils.merge_utils import dare_ties, task_arithmetic, ties

MERGE_ALGS = ("ties", "dare_ties", "linear")


def merge_deltas(deltas: Sequence[torch.Tensor], merge_alg: str, densities: Optional[float],
                 weights: Optional[float], seed: int = 0) -> torch.Tensor:
    """Combine shard changes ``tau_i = W'_i - W`` into one change; every shard takes part.

    ``weights`` is the weight of each shard (upstream's YAML key, 1.0 by default) and ``densities``
    the share of each shard's entries TIES / DARE keep. ``linear`` is the weighted sum of all shards.
    DARE's random drop is seeded with ``seed``. Computed in float32, returned in the shards' dtype.
    """
    if merge_alg not in MERGE_ALGS:
        raise ValueError(f"merge_alg {merge_alg!r} is not supported; use one of {MERGE_ALGS}")
    dtype = deltas[0].dtype
    stacked = [d.float() for d in deltas]
    shard_weights = torch.full((len(stacked),), 1.0 if weights is None else float(weights), device=stacked[0].device)
    density = 1.0 if densities is None else float(densities)
    if merge_alg == "ties":
        merged = ties(stacked, shard_weights, density=density)
    elif merge_alg == "linear":
        merged = task_arithmetic(stacked, shard_weights)
    else:
        devices = [stacked[0].device.index or 0] if stacked[0].is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            merged = dare_ties(stacked, shard_weights, density=density)
    return merged.to(dtype)
