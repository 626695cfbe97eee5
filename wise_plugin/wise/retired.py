"""``RetiredMemories``: WISE-Retrieve's finished side memories, each kept as its change on its support.

A memory is trained on the entries of its shards' random masks only (``mask_ratio`` of the weight),
so ``W_m - W`` is zero elsewhere. Keeping each retired memory as a dense float32 copy of the
projection (576 x 1536 on SmolLM2, 3.5 MB) would cost 100 copies at 1,000 edits with the shipped
recipe, over half the model's own size. Here a memory is its support, one bit per entry, plus the
values on it in a compact dtype (``memory_dtype``, float16 by default): about 0.46 MB at a 0.2 mask.
A memory trained on every entry (``mask_ratio: 1``) has no such support; with ``memory_rank`` set it
is kept as the rank-r truncated SVD of its change instead, two factors in ``memory_dtype``
(r x (576 + 1536) values on SmolLM2: 0.26 MB at r = 64 against 1.7 MB exact). An edit's change is a sum
of per-token updates concentrated in few directions, so r = 64 of 576 kept the Rel and Gen of the
memories we measured (docs/results.md); the layer re-reads its stored edits' scores under the
approximation and lowers the memory's threshold if they fell (``WISELayer._retire_group``).

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
    """Compact changes ``W_m - W`` of the retired memories, in the base weight's layout.

    Each memory is stored in whichever form is smaller: its support and the values on it
    (``support``/``values``), or, with ``rank`` set, the factors of its rank-``rank`` truncated SVD
    (``left`` ``(out, rank)`` with the singular values folded in, ``right`` ``(rank, in)``).
    """

    def __init__(self, shape: torch.Size, device: torch.device, dtype: torch.dtype = torch.float16,
                 dense_cache: int = 8, rank: Optional[int] = None) -> None:
        self.shape, self.device = torch.Size(shape), device
        self.dtype = dtype  # of values stored from now on; each memory keeps the dtype it was stored in
        self.rank = rank  # low-rank form allowed for memories stored from now on (None: exact only)
        self.parts: list[dict[str, torch.Tensor]] = []  # per memory: {support, values} or {left, right}
        self.dense_cache = dense_cache
        self._dense: OrderedDict[int, torch.Tensor] = OrderedDict()  # memory -> float32 dense change

    def __len__(self) -> int:
        return len(self.parts)

    def is_exact(self, memory: int) -> bool:
        """Whether ``memory`` is kept exactly (sparse) rather than as a low-rank approximation."""
        return "support" in self.parts[memory]

    @torch.no_grad()
    def add(self, delta: torch.Tensor, low_rank: bool = True) -> bool:
        """Keep one finished memory's change ``delta`` (same shape as the base weight); True when it
        is kept exactly, False when as its low-rank approximation (``rank`` set, ``low_rank`` allowed,
        and the factors smaller than the sparse form)."""
        support = delta.ne(0)
        itemsize = self.dtype.itemsize
        sparse_bytes = (support.numel() + 7) // 8 + int(support.sum()) * itemsize
        rank = None if self.rank is None or not low_rank else min(self.rank, *self.shape)
        if rank is not None and rank * sum(self.shape) * itemsize < sparse_bytes:
            left, singular, right = torch.linalg.svd(delta.float(), full_matrices=False)
            self.parts.append({"left": (left[:, :rank] * singular[:rank]).to(self.dtype),
                               "right": right[:rank].to(self.dtype)})
            return False
        self.parts.append({"support": pack_bits(support), "values": delta[support].to(self.dtype)})
        return True

    @torch.no_grad()
    def delta(self, memory: int, dtype: torch.dtype) -> torch.Tensor:
        """The dense change of ``memory`` in ``dtype``, from the cache or rebuilt from what is kept."""
        dense = self._dense.get(memory)
        if dense is None:
            part = self.parts[memory]
            if "support" in part:
                support = unpack_bits(part["support"], self.shape.numel()).view(self.shape)
                dense = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
                dense[support] = part["values"].to(torch.float32)
            else:
                dense = part["left"].to(torch.float32) @ part["right"].to(torch.float32)
            if self.dense_cache > 0:
                self._dense[memory] = dense
                while len(self._dense) > self.dense_cache:
                    self._dense.popitem(last=False)
        else:
            self._dense.move_to_end(memory)
        return dense.to(dtype)

    def nbytes(self) -> int:
        """Bytes the retired memories keep (the dense cache, rebuilt on demand, is not counted)."""
        return sum(t.numel() * t.element_size() for part in self.parts for t in part.values())

    def cache_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._dense.values())

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The kept tensors (never changed once stored, so a snapshot shares them)."""
        return {"parts": [dict(part) for part in self.parts]}

    def restore(self, state: dict[str, Any]) -> None:
        self.parts = [dict(part) for part in state["parts"]]
        self._dense.clear()

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {f"retired.{memory}.{name}": tensor
                for memory, part in enumerate(self.parts) for name, tensor in part.items()}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor], count: int,
                                legacy_stack: Optional[torch.Tensor] = None, conv1d_layout: bool = False) -> None:
        """Load ``count`` memories saved by :meth:`checkpoint_tensors`, or split the dense
        ``group_stack`` of checkpoints written before memories were kept sparse."""
        self.parts = []
        self._dense.clear()
        if legacy_stack is not None:
            out_dim = 1 if conv1d_layout else 0
            size = self.shape[out_dim]
            for memory in range(legacy_stack.shape[out_dim] // size):  # kept exactly, as they were saved
                self.add(legacy_stack.narrow(out_dim, memory * size, size).to(self.device), low_rank=False)
            return
        for memory in range(count):
            names = ("support", "values") if f"retired.{memory}.support" in tensors else ("left", "right")
            self.parts.append({name: tensors[f"retired.{memory}.{name}"].to(self.device) for name in names})
