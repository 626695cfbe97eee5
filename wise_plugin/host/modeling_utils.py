"""``transformers.modeling_utils`` as the package-index easyeditor expects it (transformers 4.30).

Only modules of the package-index host import this (through the import hook in ``compat``); it
adds the names transformers 5 moved to ``pytorch_utils`` or dropped, and forwards the rest.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import transformers.modeling_utils as _modeling_utils
from transformers.pytorch_utils import apply_chunking_to_forward, prune_linear_layer

__all__ = ["apply_chunking_to_forward", "prune_linear_layer", "find_pruneable_heads_and_indices"]


def find_pruneable_heads_and_indices(
    heads: Iterable[int], n_heads: int, head_size: int, already_pruned_heads: set[int]
) -> tuple[set[int], torch.LongTensor]:
    """Heads still to prune and the flat indices of the weights to keep (removed in transformers 5)."""
    heads = set(heads) - already_pruned_heads
    mask = torch.ones(n_heads, head_size)
    for head in heads:
        shifted = head - sum(1 for pruned in already_pruned_heads if pruned < head)
        mask[shifted] = 0
    index = torch.arange(len(mask.view(-1)))[mask.view(-1).eq(1)].long()
    return heads, index


def __getattr__(name: str) -> Any:
    return getattr(_modeling_utils, name)
