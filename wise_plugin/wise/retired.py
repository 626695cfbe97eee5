"""``RetiredMemories``: WISE-Retrieve's finished side memories, each kept as its change on its support.

A memory is trained on the entries of its shards' random masks only (``mask_ratio`` of the weight),
so ``W_m - W`` is zero elsewhere. Keeping each retired memory as a dense float32 copy of the
projection (576 x 1536 on SmolLM2, 3.5 MB) would cost 100 copies at 1,000 edits with the shipped
recipe, over half the model's own size. Here a memory is its support, one bit per entry, plus the
values on it in a compact dtype (``memory_dtype``, float16 by default): about 0.46 MB at a 0.2 mask.

Inference rebuilds the dense change of the memories a row may go to (the subject anchors name them,
see :mod:`wise_plugin.core.anchors`), and keeps the most recently used ones dense in a small cache,
so generation, which applies the prompt's memory at every new token, rebuilds nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import torch

MEMORY_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_BITS = 2 ** torch.arange(8, dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, eight entries per byte (flattened, zero padded)."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    return (flat.view(-1, 8) * _BITS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` entries as a flat bool tensor."""
    bits = packed.unsqueeze(1).bitwise_and(_BITS.to(packed.device)).ne(0)
    return bits.flatten()[:numel]


class RetiredMemories:
    """Sparse, compact changes ``W_m - W`` of the retired memories, in the base weight's layout."""

    def __init__(self, shape: torch.Size, device: torch.device, dtype: torch.dtype = torch.float16,
                 dense_cache: int = 8) -> None:
        self.shape, self.device = torch.Size(shape), device
        self.dtype = dtype  # of values stored from now on; each memory keeps the dtype it was stored in
        self.supports: list[torch.Tensor] = []  # packed bits of the entries each memory changed
        self.values: list[torch.Tensor] = []  # the changes on those entries
        self.dense_cache = dense_cache
        self._dense: OrderedDict[int, torch.Tensor] = OrderedDict()  # memory -> float32 dense change

    def __len__(self) -> int:
        return len(self.values)

    @torch.no_grad()
    def add(self, delta: torch.Tensor) -> None:
        """Keep one finished memory's change ``delta`` (same shape as the base weight)."""
        support = delta.ne(0)
        self.supports.append(pack_bits(support))
        self.values.append(delta[support].to(self.dtype))

    @torch.no_grad()
    def delta(self, memory: int, dtype: torch.dtype) -> torch.Tensor:
        """The dense change of ``memory`` in ``dtype``, from the cache or rebuilt from its support."""
        dense = self._dense.get(memory)
        if dense is None:
            support = unpack_bits(self.supports[memory], self.shape.numel()).view(self.shape)
            dense = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
            dense[support] = self.values[memory].to(torch.float32)
            if self.dense_cache > 0:
                self._dense[memory] = dense
                while len(self._dense) > self.dense_cache:
                    self._dense.popitem(last=False)
        else:
            self._dense.move_to_end(memory)
        return dense.to(dtype)

    def nbytes(self) -> int:
        """Bytes the retired memories keep (the dense cache, rebuilt on demand, is not counted)."""
        return sum(t.numel() * t.element_size() for t in self.supports + self.values)

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._dense.values())

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The kept tensors (never changed once stored, so a snapshot shares them)."""
        return {"supports": list(self.supports), "values": list(self.values)}

    def restore(self, state: dict[str, Any]) -> None:
        self.supports, self.values = list(state["supports"]), list(state["values"])
        self._dense.clear()

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for memory, (support, values) in enumerate(zip(self.supports, self.values)):
            tensors[f"retired.{memory}.support"] = support
            tensors[f"retired.{memory}.values"] = values
        return tensors

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor], count: int,
                                legacy_stack: Optional[torch.Tensor] = None, conv1d_layout: bool = False) -> None:
        """Load ``count`` memories saved by :meth:`checkpoint_tensors`, or split the dense
        ``group_stack`` of checkpoints written before memories were kept sparse."""
        self.supports, self.values = [], []
        self._dense.clear()
        if legacy_stack is not None:
            out_dim = 1 if conv1d_layout else 0
            size = self.shape[out_dim]
            for memory in range(legacy_stack.shape[out_dim] // size):
                self.add(legacy_stack.narrow(out_dim, memory * size, size).to(self.device))
            return
        for memory in range(count):
            self.supports.append(tensors[f"retired.{memory}.support"].to(self.device))
            self.values.append(tensors[f"retired.{memory}.values"].to(self.device))
