"""Subject anchors: a memory answers only rows that mention the subject of one of its edits.

Activation-based routing scores the relation's words as much as the subject, so "The mother
tongue of Léon Blum is" reaches the memory that holds "The mother tongue of Danielle Darrieux is".
An anchor is the token sequence of an edit's subject (with and without a leading space, as the
tokenizer writes it mid-sentence and at the start); a row passes a memory's gate when it contains
one of the anchors of that memory's edits. Paraphrases name the subject, so they pass; near
misses and unrelated inputs do not. The subject is the request's ``subject`` when it occurs in the
prompt, else a guess (:func:`wise_plugin.core.subjects.request_subject`).

``AnswerIndex`` pairs each edit's subject anchors with the token sequences of its new answer: a
memory that sees an edit's answer written after that edit's subject stops acting on the positions
from there on (``answer_stop``), so free generation gives the answer once and goes on as the
unedited model would.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from wise_plugin.core.subjects import request_subject

Anchor = tuple[int, ...]


def token_variants(tok: Any, text: str) -> list[Anchor]:
    """Token sequences of ``text`` as the tokenizer writes it at the start and mid-sentence."""
    variants = {tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in (text, " " + text)}
    return sorted(v for v in variants if v)


def subject_anchors(tok: Any, request: dict[str, Any]) -> Optional[list[Anchor]]:
    """Token sequences of the request's subject; None when no subject is found (the edit's memory
    is then not gated)."""
    subject = request_subject(request)
    return token_variants(tok, subject) if subject else None


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


def _find(tokens: Sequence[int], pattern: Anchor, start: int = 0) -> Optional[int]:
    """First position >= ``start`` where ``pattern`` begins in ``tokens``; None if it does not occur."""
    width = len(pattern)
    for position in range(start, len(tokens) - width + 1):
        if tokens[position] == pattern[0] and tuple(tokens[position:position + width]) == pattern:
            return position
    return None


class AnswerIndex:
    """Each memory's edits as (subject anchors, answer anchors) pairs, for ``answer_stop``.

    An edit's answer counts only where it follows that edit's subject in the row: an answer that
    merely names something else (another edit's answer is "Fiat", and "Fiat Campagnola, developed
    by" is a prompt of the same memory) must not silence the memory before it has answered. An
    edit without a subject counts its answer anywhere.
    """

    def __init__(self) -> None:
        self.groups: list[list[tuple[Optional[list[Anchor]], list[Anchor]]]] = []

    def add(self, memory: int, tok: Any, request: dict[str, Any]) -> None:
        """Book the request's subject and answer under ``memory``."""
        while len(self.groups) <= memory:
            self.groups.append([])
        self.groups[memory].append((subject_anchors(tok, request), token_variants(tok, str(request["target_new"]).strip())))

    def first_end(self, tokens: Sequence[int], memory: int) -> Optional[int]:
        """Position of the last token of the earliest-ending answer of ``memory``'s edits written
        after its edit's subject in ``tokens``; None when there is none."""
        end: Optional[int] = None
        for subjects, answers in self.groups[memory] if memory < len(self.groups) else ():
            after = 0
            if subjects is not None:
                named = [(at, len(s)) for s in subjects if (at := _find(tokens, s)) is not None]
                if not named:
                    continue
                after = min(at + width for at, width in named)
            for answer in answers:
                at = _find(tokens, answer, after)
                if at is not None:
                    last = at + len(answer) - 1
                    end = last if end is None else min(end, last)
        return end

    def state(self) -> list[list[list[Any]]]:
        """JSON form, for checkpoints."""
        return [[[None if subjects is None else [list(a) for a in subjects], [list(a) for a in answers]]
                 for subjects, answers in group] for group in self.groups]

    @classmethod
    def from_state(cls, state: Optional[list[list[list[Any]]]]) -> "AnswerIndex":
        index = cls()
        index.groups = [[(None if subjects is None else [tuple(a) for a in subjects], [tuple(a) for a in answers])
                         for subjects, answers in group] for group in (state or [])]
        return index


def extend_row_ids(previous: Optional[torch.Tensor], ids: Optional[torch.Tensor], continuing: bool) -> Optional[torch.Tensor]:
    """Token ids of the rows so far: ``ids`` for a new call, appended to ``previous`` while a KV
    cache grows (generation passes only the new tokens then)."""
    if ids is None:
        return None
    if continuing and previous is not None and previous.shape[0] == ids.shape[0]:
        return torch.cat([previous, ids.to(previous.device)], dim=1)
    return ids.detach()


def answer_gate(answers: AnswerIndex, row_ids: Optional[torch.Tensor], choice: torch.Tensor,
                length: int) -> Optional[torch.Tensor]:
    """(rows, length, 1): 0 from the last token of the first answer of the row's memory (expert)
    written in the row, 1 before it; None when no row has written one (``answer_stop``).

    ``row_ids`` are the rows' token ids so far (``extend_row_ids``); this call's positions are
    their last ``length``. The output at a position predicts the next token, so from the answer's
    last token on the memory has nothing left to say: the model continues after the answer as
    unedited, which keeps free generation from repeating it. Teacher-forced scoring is unchanged:
    its labels end at the answer's last token.
    """
    if row_ids is None or row_ids.shape[0] != choice.shape[0] or row_ids.shape[1] < length:
        return None
    offset = row_ids.shape[1] - length
    gate: Optional[torch.Tensor] = None
    for row, memory in enumerate(choice.tolist()):
        if memory < 0:
            continue
        end = answers.first_end(row_ids[row].tolist(), memory)
        if end is None or end - offset >= length:
            continue
        if gate is None:
            gate = torch.ones(choice.shape[0], length, 1, device=choice.device)
        gate[row, max(end - offset, 0):] = 0.0
    return gate
