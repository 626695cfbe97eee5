"""``MemoryBook``: the book-keeping of WISE's side memories, apart from their weights.

It holds what the edits have decided rather than what inference multiplies: the edit counter,
the current shard (its random gradient mask and its starting point), shard changes waiting for
the merge, the routing threshold of the memory being trained and of every retired memory, the
stored edits that rehearsal and replay draw from, and the bare rows whose current scores refresh
the threshold. ``WISELayer`` owns one book and reads its thresholds when it routes.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional

import torch

from wise_plugin.core.anchors import AnchorIndex, AnswerIndex

Probe = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # projection inputs, whole-row mask, prompt mask


class MemoryBook:
    """Counters, shard masks, thresholds and stored edits of one WISE layer."""

    def __init__(self, shape: torch.Size, device: torch.device, mask_ratio: float, seed: int) -> None:
        self.shape, self.device = shape, device
        self.mask_ratio, self.seed = mask_ratio, seed
        self.edits = 0  # edits made so far, over the whole life of the layer
        self.shard_index = 0  # index of the shard currently being trained
        self.shard_start: Optional[torch.Tensor] = None  # side weight when the current shard began
        self.shard_deltas: list[torch.Tensor] = []  # saved shard changes of the current merge group
        self.mask = self.draw_mask(0)
        self.min_edit_score: Optional[float] = None
        self.threshold: Optional[float] = None  # of the memory being trained
        self.group_thresholds: list[float] = []  # of the retired memories (WISE-Retrieve)
        self.group_start = 0  # edits made before the active memory began
        self.memory: list[tuple[str, str]] = []  # (prompt, target) of every edit, for rehearsal and replay
        self.probes: list[Probe] = []  # bare rows of the active memory's edits
        self.anchors = AnchorIndex()  # subject anchors of each memory's edits (subject_anchor)
        self.answers = AnswerIndex()  # subjects and new answers of each memory's edits (answer_stop)
        self.reservoir: list[int] = []  # indices (into memory) of earlier-memory edits replay draws from
        self.reservoir_seen = 0  # earlier-memory edits the reservoir has considered

    def thresholds(self) -> list[float]:
        """Thresholds of the memories inference can route to: retired ones, then the active one."""
        return self.group_thresholds + ([] if self.threshold is None else [self.threshold])

    def active_edits(self) -> list[tuple[str, str]]:
        """The edits that live in the memory being trained."""
        return self.memory[self.group_start:]

    def replay_reservoir(self, size: int) -> list[int]:
        """Indices of the edits of retired memories that replay may draw from: all of them while they
        number at most ``size``, then a uniform sample of ``size`` (reservoir sampling, each step
        seeded by the edit's index so a resumed run draws the same). Replay and its cache of
        projection inputs then stay the same size however long the stream."""
        for index in range(self.reservoir_seen, self.group_start):
            if len(self.reservoir) < size:
                self.reservoir.append(index)
            else:
                slot = random.Random(self.seed * 7919 + index).randrange(index + 1)
                if slot < size:
                    self.reservoir[slot] = index
        self.reservoir_seen = max(self.reservoir_seen, self.group_start)
        return self.reservoir

    def draw_mask(self, shard_index: int) -> torch.Tensor:
        """The shard's random gradient mask: ``mask_ratio`` of the entries, seeded per shard."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + shard_index)
        return (torch.rand(self.shape, generator=generator) < self.mask_ratio).to(self.device)

    def record_edit(self, score: float, act_ratio: float, probe: Optional[Probe],
                    probe_scores: Callable[[list[Probe]], float]) -> None:
        """Count one finished edit and set the active threshold to ``act_ratio`` x the lowest edit score.

        With a ``probe`` (the edit's bare row) the lowest score is taken again over every stored bare
        row of the memory (``probe_scores``): later edits move the side memory, so scores taken when
        each edit finished go stale.
        """
        if probe is not None:
            self.probes.append(probe)
            self.min_edit_score = min(score, probe_scores(self.probes))
        else:
            self.min_edit_score = score if self.min_edit_score is None else min(self.min_edit_score, score)
        self.threshold = act_ratio * self.min_edit_score
        self.edits += 1

    def save_shard(self, side_weight: torch.Tensor) -> None:
        """Store the current shard's change and draw the next shard's mask."""
        assert self.shard_start is not None
        self.shard_deltas.append(side_weight.detach() - self.shard_start)
        self.shard_index += 1
        self.mask = self.draw_mask(self.shard_index)
        self.shard_start = None

    def retire(self) -> None:
        """WISE-Retrieve: the active memory keeps its threshold; the next one starts empty."""
        assert self.threshold is not None
        self.group_thresholds.append(self.threshold)
        self.threshold = self.min_edit_score = None
        self.group_start = self.edits
        self.probes = []

    # -- state ------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A deep copy of everything an edit can change."""
        clone = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        return {"shard_start": clone(self.shard_start), "shard_deltas": [clone(d) for d in self.shard_deltas],
                "mask": clone(self.mask), "edits": self.edits, "shard_index": self.shard_index,
                "min_edit_score": self.min_edit_score, "threshold": self.threshold, "memory": list(self.memory),
                "group_thresholds": list(self.group_thresholds), "group_start": self.group_start,
                "probes": list(self.probes), "anchors": self.anchors.state(), "answers": self.answers.state(),
                "reservoir": list(self.reservoir), "reservoir_seen": self.reservoir_seen}

    def restore(self, state: dict[str, Any]) -> None:
        self.shard_start = None if state["shard_start"] is None else state["shard_start"].clone()
        self.shard_deltas = [d.clone() for d in state["shard_deltas"]]
        self.mask = state["mask"].clone()
        self.edits, self.shard_index = state["edits"], state["shard_index"]
        self.min_edit_score, self.threshold = state["min_edit_score"], state["threshold"]
        self.memory = list(state["memory"])
        self.group_thresholds = list(state["group_thresholds"])
        self.group_start = state["group_start"]
        self.probes = list(state.get("probes", []))
        self.anchors = AnchorIndex.from_state(state.get("anchors"))
        self.answers = AnswerIndex.from_state(state.get("answers"))
        # states from before the reservoir: it is rebuilt from the stored edits on the next draw
        self.reservoir = list(state.get("reservoir", []))
        self.reservoir_seen = state.get("reservoir_seen", 0)

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON fields of the book for a checkpoint."""
        tensors = {"mask": self.mask}
        if self.shard_start is not None:
            tensors["shard_start"] = self.shard_start
        for index, delta in enumerate(self.shard_deltas):
            tensors[f"shard_delta.{index}"] = delta
        for index, (acts, row_mask, prompt_mask) in enumerate(self.probes):
            tensors.update({f"probe.{index}.acts": acts, f"probe.{index}.row_mask": row_mask,
                            f"probe.{index}.prompt_mask": prompt_mask})
        meta = {"mask_ratio": self.mask_ratio, "seed": self.seed, "edits": self.edits,
                "shard_index": self.shard_index, "n_shard_deltas": len(self.shard_deltas),
                "n_probes": len(self.probes), "min_edit_score": self.min_edit_score, "threshold": self.threshold,
                "group_thresholds": list(self.group_thresholds), "group_start": self.group_start,
                "memory": [list(item) for item in self.memory], "anchors": self.anchors.state(),
                "answers": self.answers.state(),
                "reservoir": list(self.reservoir), "reservoir_seen": self.reservoir_seen}
        return tensors, meta

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                              dtype: torch.dtype) -> None:
        """Inverse of ``checkpoint_state``; float tensors in ``dtype``, all on the book's device."""
        cast = lambda name: tensors[name].to(device=self.device, dtype=dtype)  # noqa: E731
        self.mask_ratio, self.seed = meta["mask_ratio"], meta["seed"]
        self.restore({
            "shard_start": cast("shard_start") if "shard_start" in tensors else None,
            "shard_deltas": [cast(f"shard_delta.{i}") for i in range(meta["n_shard_deltas"])],
            "mask": tensors["mask"].to(device=self.device, dtype=torch.bool),
            "edits": meta["edits"], "shard_index": meta["shard_index"],
            "min_edit_score": meta["min_edit_score"], "threshold": meta["threshold"],
            "memory": [tuple(item) for item in meta["memory"]],
            "group_thresholds": meta["group_thresholds"], "group_start": meta["group_start"],
            "probes": [(cast(f"probe.{i}.acts"), tensors[f"probe.{i}.row_mask"].to(self.device),
                        tensors[f"probe.{i}.prompt_mask"].to(self.device)) for i in range(meta["n_probes"])],
            "anchors": meta.get("anchors"),  # checkpoints before subject anchors: every memory open
            "answers": meta.get("answers"),  # checkpoints before answer anchors: no memory stops early
            "reservoir": meta.get("reservoir", []), "reservoir_seen": meta.get("reservoir_seen", 0),
        })
