"""Merging knowledge shards with peft's task-vector merge utilities."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from peft.utils.merge_utils import ties


def merge_deltas(
    deltas: Sequence[torch.Tensor], merge_alg: str, densities: Optional[float], weights: Optional[float]
) -> torch.Tensor:
    """Combine shard changes ``tau_i = W'_i - W`` into one change; every shard takes part.

    ``weights`` is the weight of each shard (upstream's YAML key, 1.0 by default) and ``densities``
    the share of each shard's entries TIES keeps by magnitude. The result is in float32 when the
    shards are lower precision, then cast back.
    """
    if merge_alg != "ties":
        raise ValueError(f"merge_alg {merge_alg!r} is not supported; use 'ties'")
    dtype = deltas[0].dtype
    stacked = [d.float() for d in deltas]
    shard_weights = torch.full((len(stacked),), 1.0 if weights is None else float(weights), device=stacked[0].device)
    merged = ties(stacked, shard_weights, density=1.0 if densities is None else float(densities))
    return merged.to(dtype)
