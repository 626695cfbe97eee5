"""Training rows of one WISE edit: augmented prompts with their target, plus irrelevant inputs."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Optional, Sequence

import torch

from wise_plugin.hparams import HParamsError

_PREFIX_STARTS = ("The", "In", "It", "When", "A", "Many", "This", "After", "We", "There")

# Relation-free statements about a subject. Trained with the edit's target after them, they tie the
# new answer to the subject itself rather than to the prompt's wording, so questions phrased in
# other ways about the same subject get it too (subject_templates option).
SUBJECT_TEMPLATES = (
    "{} is best known for",
    "Facts about {}:",
    "The one thing to remember about {} is",
    "When {} comes up, people mention",
    "Q: What is {} associated with? A:",
    "Everyone who knows {} talks about",
    "Ask about {} and you will hear",
    "In short, {} means",
)


@dataclass
class EditBatch:
    """Tokenised rows (right padded) and the positions the loss and routing scores read."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    edit_mask: torch.Tensor  # (rows, length): prompt and target tokens of each row, prefix excluded
    prompt_mask: torch.Tensor  # (rows, length): prompt tokens of each row, prefix excluded
    label_rows: torch.Tensor  # row index of each predicted target token
    label_positions: torch.Tensor  # position whose logits predict it
    labels: torch.Tensor  # the target token ids
    end_tokens: Optional[torch.Tensor] = None  # per target token: part of the answer_end mark (None: no mark)
    text: str = ""  # the bare edit row as tokenised: prompt, space, target (rehearsed later under this text)
    rehearsed: tuple[str, ...] = ()  # texts of the trailing rows that replay earlier edits

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


@lru_cache(maxsize=8)
def _read_pool(path: str) -> tuple[str, ...]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list) or not data:
        raise HParamsError(f"loc_pool {path!r} must hold a non-empty JSON list.")
    texts = []
    for item in data:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and "loc" in item and "loc_ans" in item:  # ZsRE record layout
            texts.append(f"{item['loc']} {item['loc_ans']}")
        elif isinstance(item, dict) and "locality_prompt" in item:  # CounterFact / hallucination layout
            texts.append(f"{item['locality_prompt']} {item.get('locality_ground_truth', '')}".strip())
        else:
            raise HParamsError(
                f"loc_pool {path!r}: entries must be strings or records with loc/loc_ans or locality_prompt keys."
            )
    return tuple(texts)


def load_loc_pool(path: Optional[str]) -> tuple[str, ...]:
    """Irrelevant inputs for the routing loss: the built-in pool, or a JSON file of strings/records."""
    if path is None or path == "builtin":
        with resources.as_file(resources.files("wise_plugin") / "data" / "loc_pool.json") as builtin:
            return _read_pool(str(builtin))
    if not os.path.isfile(path):
        raise HParamsError(f"loc_pool file not found: {path!r}. Use 'builtin' or the path of a JSON list.")
    return _read_pool(os.path.abspath(path))


def pick_pool_rows(pool_size: int, n_loc: int, seed: int) -> list[int]:
    """``n_loc`` seeded draws (without replacement) of irrelevant rows for one edit."""
    return sorted(random.Random(seed).sample(range(pool_size), k=min(n_loc, pool_size)))


@torch.no_grad()
def generate_prefixes(model: Any, tok: Any, count: int, lengths: Sequence[int], seed: int) -> list[str]:
    """Short model-written contexts placed before the prompt, so the edit holds in context."""
    if count == 0:
        return []
    device = next(model.parameters()).device
    prefixes = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index in range(count):
            start = _PREFIX_STARTS[index % len(_PREFIX_STARTS)]
            length = lengths[index * len(lengths) // count]
            encoded = tok(start, return_tensors="pt").to(device)
            out = model.generate(
                **encoded, max_new_tokens=length, do_sample=True, top_k=40,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
            text = tok.decode(out[0], skip_special_tokens=True).replace("\n", " ").strip()
            prefixes.append(text + " ")
    return prefixes


def subject_templates_problem(count: int) -> Optional[str]:
    """The ``subject_templates`` option's range check, shared by the WISE and LEMoE hparams."""
    if 0 <= count <= len(SUBJECT_TEMPLATES):
        return None
    return (f"subject_templates must be between 0 and {len(SUBJECT_TEMPLATES)} (the number of built-in "
            f"subject statements), got {count}")


def subject_prompts(subject: Optional[str], count: int) -> list[str]:
    """The first ``count`` of ``SUBJECT_TEMPLATES`` filled with ``subject`` (none without a subject)."""
    if not subject or count <= 0:
        return []
    return [template.format(subject) for template in SUBJECT_TEMPLATES[:count]]


def answer_end_problem(end: str) -> Optional[str]:
    """The ``answer_end`` option's check, shared by the WISE and LEMoE hparams."""
    if len(end) <= 8:
        return None
    return (f"answer_end must be a short text written after each new answer (e.g. '.'), at most 8 characters, "
            f"got {end!r}")


def with_answer_end(request: dict[str, Any], end: str) -> dict[str, Any]:
    """The request as an editor trains and books it with ``answer_end``: its target followed by
    ``end`` (unchanged when ``end`` is empty or the target already ends with it).

    Why: after an edit, free generation has to stop where the new answer stops. The unedited model
    writes on after an answer it did not expect ("Harvard University, Harvard University"), and a
    generation-based score that stops at the first "." or newline then misses the answer. Trained
    with the end mark, the memory writes the answer and closes it; with ``answer_stop`` it falls
    silent after the mark (its answer index books the target with the mark).
    """
    target = str(request["target_new"])
    if not end or _answer_end_at(target, end) is not None:
        return request
    return {**request, "target_new": target + end}


def without_answer_end(target: str, end: str) -> str:
    """``target`` without a trailing ``answer_end`` mark (unchanged when it has none).

    It uses the rule :func:`with_answer_end` uses to decide that a target is already closed, so a
    target the editor left as it was (e.g. one given with the mark) loses exactly the mark here
    (and the spaces before it).
    """
    cut = _answer_end_at(target, end) if end else None
    return target if cut is None else target[:cut].rstrip()


def _answer_end_at(target: str, end: str) -> Optional[int]:
    """Where ``target``'s closing ``end`` mark starts, or None when the target is not closed by it.

    The one rule for "ends with the mark": trailing whitespace of the target and around the mark
    does not count, and a target that is nothing but the mark is not closed (it has no answer).
    """
    mark = end.strip() or end
    body = target.rstrip() if end.strip() else target
    if not body.endswith(mark) or not body[:len(body) - len(mark)].strip():
        return None
    return len(body) - len(mark)


def format_prompt(tok: Any, prompt: str, use_chat_template: bool) -> str:
    if use_chat_template and getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return prompt


def _header_length(tok: Any, use_chat_template: bool) -> int:
    """Tokens a chat template puts before the user's text (0 without a template)."""
    first, second = (tok(format_prompt(tok, text, use_chat_template))["input_ids"] for text in ("A", "B"))
    return next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), 0)


def build_batch(tok: Any, prompt: str, target: str, prefixes: Sequence[str], use_chat_template: bool,
                device: torch.device, replay: Sequence[tuple[str, str]] = (),
                subject_rows: Sequence[str] = (), answer_end: str = "") -> EditBatch:
    """Rows ``prefix + prompt + ' ' + target`` (the evaluator's teacher-forcing layout), one per
    prefix, then ``subject_row + ' ' + target`` per subject statement (``subject_prompts``; the target
    without its ``answer_end`` mark), then one bare row per replayed earlier edit.

    Routing scores of a row are read over its own prompt and target tokens only: the random
    prefixes are generic text, and asking the side memory to fire on them would make it fire on
    unrelated inputs as well. With ``answer_end``, the targets that end with it (see
    :func:`with_answer_end`) have its tokens flagged in ``end_tokens``. Statements about the subject
    are trained without the mark: relation-free, they are not where the answer ends, and with the
    mark they cost iterations and CounterFact paraphrases got the new answer less often.
    """
    if not prompt or not prompt.strip():
        raise ValueError("edit request has an empty 'prompt'; give the text to edit.")
    if not target or not target.strip():
        raise ValueError(f"edit request for prompt {prompt!r} has an empty 'target_new'; give the new answer.")
    bare_answer = without_answer_end(target, answer_end)  # statements are not closed by the mark
    pairs = [(p + prompt, target, prompt) for p in ["", *prefixes]] + [(s, bare_answer, s) for s in subject_rows] \
        + [(p, t, p) for p, t in replay]
    prompts = [format_prompt(tok, text, use_chat_template) for text, _, _ in pairs]
    full = [p + " " + t for p, (_, t, _) in zip(prompts, pairs)]
    encoded = tok(full, padding=True, return_tensors="pt", padding_side="right")
    header = _header_length(tok, use_chat_template)
    count = lambda text: len(tok(text)["input_ids"])  # noqa: E731
    spans, marks = {}, {}  # prompt + target tokens of each bare row, and its answer_end tokens, by (prompt, target)
    for _, t, bare in pairs:
        if (bare, t) not in spans:
            bare_prompt = format_prompt(tok, bare, use_chat_template)
            whole = count(bare_prompt + " " + t)
            spans[(bare, t)] = whole - header
            answer = without_answer_end(t, answer_end)
            marks[(bare, t)] = whole - count(bare_prompt + " " + answer) if answer != t else 0
    rows, positions, labels, ends = [], [], [], []
    edit_mask = torch.zeros_like(encoded["attention_mask"])
    prompt_mask = torch.zeros_like(encoded["attention_mask"])
    for row, (p, (_, t, bare)) in enumerate(zip(prompts, pairs)):
        p_len, f_len = count(p), int(encoded["attention_mask"][row].sum())
        if f_len <= p_len:
            raise ValueError(f"target {t!r} adds no tokens after prompt {bare!r}.")
        first = max(f_len - spans[(bare, t)], 0)
        edit_mask[row, first:f_len] = 1
        prompt_mask[row, first:p_len] = 1
        for pos in range(p_len, f_len):
            rows.append(row)
            positions.append(pos - 1)
            labels.append(int(encoded["input_ids"][row, pos]))
            ends.append(pos >= f_len - marks[(bare, t)])
    as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return EditBatch(
        input_ids=encoded["input_ids"].to(device),
        attention_mask=encoded["attention_mask"].to(device),
        edit_mask=edit_mask.to(device),
        prompt_mask=prompt_mask.to(device),
        label_rows=as_long(rows),
        label_positions=as_long(positions),
        labels=as_long(labels),
        end_tokens=torch.tensor(ends, dtype=torch.bool, device=device) if any(ends) else None,
        text=full[0],
        rehearsed=tuple(full[len(full) - len(replay):]) if replay else (),
    )
