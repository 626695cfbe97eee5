"""Subject anchors: a memory answers only rows that mention the subject of one of its edits.

Activation-based routing scores the relation's words as much as the subject, so "The mother
tongue of Léon Blum is" reaches the memory that holds "The mother tongue of Danielle Darrieux is".
An anchor is the token sequence of an edit's subject (with and without a leading space, as the
tokenizer writes it mid-sentence and at the start); a row passes a memory's gate when it contains
one of the anchors of that memory's edits. Paraphrases name the subject, so they pass; near
misses and unrelated inputs do not. The subject is the request's ``subject`` when it occurs in the
prompt, else a guess (:func:`wise_plugin.core.subjects.request_subject`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from wise_plugin.core.subjects import request_subject

Anchor = tuple[int, ...]


def subject_anchors(tok: Any, request: dict[str, Any]) -> Optional[list[Anchor]]:
    """Token sequences of the request's subject; None when no subject is found (the edit's memory
    is then not gated)."""
    subject = request_subject(request)
    if not subject:
        return None
    variants = {tuple(tok(text, add_special_tokens=False)["input_ids"]) for text in (subject, " " + subject)}
    return sorted(v for v in variants if v)


class AnchorIndex:
    """Anchors of each memory, and which memories a batch of rows mentions.

    ``groups[m]`` holds the anchors of memory ``m``'s edits, or None once one of its edits has no
    anchor (that memory is then open to every row, as without anchors).
    """

    def __init__(self) -> None:
        self.groups: list[Optional[list[Anchor]]] = []
        self._by_first: Optional[dict[int, list[tuple[int, Anchor]]]] = None  # first token -> (memory, anchor)

    def add(self, memory: int, anchors: Optional[Sequence[Anchor]]) -> None:
        """Book one edit's anchors under ``memory`` (the active memory's index)."""
        while len(self.groups) <= memory:
            self.groups.append([])
        if anchors is None or self.groups[memory] is None:
            self.groups[memory] = None
        else:
            self.groups[memory] = sorted(set(self.groups[memory]) | set(anchors))
        self._by_first = None

    def _lookup(self) -> dict[int, list[tuple[int, Anchor]]]:
        """Anchors by their first token, built once per change: a row is matched in one pass over
        its tokens, whatever the number of memories."""
        if self._by_first is None:
            self._by_first = {}
            for memory, anchors in enumerate(self.groups):
                for anchor in anchors or ():
                    self._by_first.setdefault(anchor[0], []).append((memory, anchor))
        return self._by_first

    def anchored(self, memories: int) -> torch.Tensor:
        """(memories,) bool: the memory has subject anchors (False for open memories and for those
        with no edit booked yet)."""
        flags = torch.zeros(memories, dtype=torch.bool)
        for memory, anchors in enumerate(self.groups[:memories]):
            flags[memory] = anchors is not None
        return flags

    def hits(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], memories: int) -> torch.Tensor:
        """(rows, memories) bool: the row's real tokens contain an anchor of the memory (always true
        for memories without anchors)."""
        rows = input_ids.shape[0]
        found = torch.ones(rows, memories, dtype=torch.bool)
        gated = self.anchored(memories)
        if not bool(gated.any()):
            return found.to(input_ids.device)
        found[:, gated] = False
        first = self._lookup()
        ids = input_ids.tolist()
        real = attention_mask.bool().tolist() if attention_mask is not None else None
        for row, tokens in enumerate(ids):
            if real is not None:
                tokens = [t for t, keep in zip(tokens, real[row][-len(tokens):]) if keep]
            for start, token in enumerate(tokens):
                for memory, anchor in first.get(token, ()):
                    if memory < memories and tuple(tokens[start:start + len(anchor)]) == anchor:
                        found[row, memory] = True
        return found.to(input_ids.device)

    def state(self) -> list[Optional[list[list[int]]]]:
        """JSON form, for checkpoints."""
        return [None if group is None else [list(a) for a in group] for group in self.groups]

    @classmethod
    def from_state(cls, state: Optional[list[Optional[list[list[int]]]]]) -> "AnchorIndex":
        index = cls()
        index.groups = [None if group is None else [tuple(a) for a in group] for group in (state or [])]
        return index
