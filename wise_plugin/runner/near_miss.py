"""Near-miss locality: prompts that share an edit's relation but ask about another subject.

EasyEdit's Loc reads one unrelated prompt per edit (for ZsRE an NQ question), which a router that
separates "edit-like" from "everything else" passes easily. A near miss is harder: "What is the
product made by Toyota?" next to the edit "What is the product made by UniFirst? -> unmanned
aircraft". Per request the runner holds
- the edit prompt with its subject replaced by ``swaps`` other subjects of the same file (when the
  file names the subject and the prompt contains it: ZsRE, CounterFact), taken first from records
  asked with the same question template (same relation, a subject of the right kind); or from a
  ``pool`` file of the same layout whose subjects the stream does not edit, and
- the request's own locality prompt when the dataset writes it as a near miss (CounterFact and the
  built-in sets: "Shaquille O'Neal plays" beside "David Robinson professionally plays the sport").

They are scored against the unedited model's own answers: the share of near-miss prompts whose
greedy continuation (``tokens`` tokens) is the same after all edits as before. A near-miss prompt
that is itself an edit or rephrase prompt of the stream is left out (its answer should change).
Nothing here is shown to an editor: the prompts travel beside the requests, never inside them.
"""

from __future__ import annotations

import json
import random
from typing import Any, Collection, Optional, Sequence, Union

# datasets whose locality prompt is a near miss of the edit (same relation, other subject)
LOCALITY_IS_NEAR_MISS = ("counterfact", "builtin")
PROMPT_KEY = {"zsre": "src", "counterfact": "prompt", "builtin": "prompt", "hallucination": "prompt",
              "temporal": "prompt"}
# Near misses are built for question-like prompts only: a passage with its subject swapped is not a
# neighbouring fact. Hallucination and temporal records still pass their subject to the editor.
NEAR_MISS_DATASETS = ("zsre", "counterfact", "builtin")


def as_paths(path: Union[str, Sequence[str], None]) -> list[str]:
    """One file or several edited as one stream, as a list (empty for None)."""
    if path is None:
        return []
    return [path] if isinstance(path, str) else list(path)


def subjects_by_prompt(path: Union[str, Sequence[str]], dataset: str) -> dict[str, str]:
    """Edit prompt -> subject, from the raw records of ``path`` (one file or several; empty when
    the files name none). A prompt that two files give keeps the first file's subject."""
    key = PROMPT_KEY.get(dataset)
    if key is None:
        return {}
    subjects: dict[str, str] = {}
    for one in as_paths(path):
        with open(one, encoding="utf-8") as handle:
            records = json.load(handle)
        for r in records:
            if isinstance(r.get("subject"), str) and r["subject"].strip() and isinstance(r.get(key), str):
                subjects.setdefault(r[key], r["subject"])
    return subjects


def template(prompt: str, subject: str) -> str:
    """The question with its subject taken out: records sharing it ask the same relation."""
    return prompt.replace(subject, "{}", 1)


def near_miss_prompts(request: dict[str, Any], dataset: str, subjects: dict[str, str],
                      by_template: dict[str, list[str]], swaps: int = 2, seed: int = 0,
                      others: Optional[Sequence[str]] = None) -> list[str]:
    """The near-miss prompts of one request (see the module docstring), in a fixed order.
    ``subjects`` names each edit prompt's subject; swapped-in subjects come from ``by_template``
    (same question template) and then ``others`` (default: every subject of ``subjects``)."""
    prompts: list[str] = []
    subject = subjects.get(request["prompt"])
    if subject and subject in request["prompt"] and swaps > 0:
        usable = lambda s: s != subject and subject not in s and s not in subject  # noqa: E731
        same = [s for s in by_template.get(template(request["prompt"], subject), []) if usable(s)]
        pool = sorted(set(subjects.values())) if others is None else others
        rest = [s for s in pool if usable(s) and s not in same]
        rng = random.Random(f"{seed}:{request['prompt']}")  # a string seed: the same draw in every process
        chosen = rng.sample(same, k=min(swaps, len(same)))
        chosen += rng.sample(rest, k=min(swaps - len(chosen), len(rest)))
        prompts += [request["prompt"].replace(subject, other, 1) for other in chosen]
    if dataset in LOCALITY_IS_NEAR_MISS:
        prompts += [value["prompt"] for value in request.get("locality", {}).values() if value.get("prompt")]
    return prompts


def attach_near_miss(requests: Sequence[dict[str, Any]], dataset: str, path: Union[str, Sequence[str], None],
                     swaps: int = 2, seed: int = 0, pool: Optional[str] = None,
                     subjects: Optional[dict[str, str]] = None) -> list[list[str]]:
    """Near-miss prompts of every request (an empty list where there are none).

    Swapped-in subjects come from the edit file(s) ``path`` themselves, or from ``pool``, another file of
    the same layout (e.g. the ZsRE train file) whose subjects the stream does not edit: when the
    stream covers the whole edit file, every subject of the file is edited, and its near misses
    then ask about edited subjects; a pool keeps them neighbours at every T. ``subjects``:
    ``subjects_by_prompt(path, dataset)`` when the caller has it already (read once, not twice).
    """
    if dataset not in NEAR_MISS_DATASETS:
        return [[] for _ in requests]
    if subjects is None:
        subjects = subjects_by_prompt(path, dataset) if path else {}
    swapped = subjects_by_prompt(pool, dataset) if pool else subjects
    if pool:
        edited = set(subjects.values())
        swapped = {prompt: subject for prompt, subject in swapped.items() if subject not in edited}
    by_template: dict[str, list[str]] = {}
    for prompt, subject in swapped.items():
        if subject in prompt:
            by_template.setdefault(template(prompt, subject), []).append(subject)
    by_template = {key: sorted(set(values)) for key, values in by_template.items()}
    others = sorted(set(swapped.values())) if pool else None
    return [near_miss_prompts(r, dataset, subjects, by_template, swaps, seed, others) for r in requests]


def stream_prompts(requests: Sequence[dict[str, Any]]) -> set[str]:
    """Edit and rephrase prompts of a stream: near-miss prompts among them are edits, not neighbours."""
    return {prompt for r in requests for prompt in (r["prompt"], r.get("rephrase_prompt")) if prompt}


def counted(prompts: Sequence[str], edited: Collection[str]) -> list[str]:
    """The near-miss prompts that count: those that are not edit or rephrase prompts of the stream."""
    return [prompt for prompt in prompts if prompt not in edited]


def near_miss_fields(prompts: Sequence[str], changed: Collection[str], edited: Collection[str]) -> dict[str, Any]:
    """A record's near-miss fields from which of a request's near-miss ``prompts`` changed their
    greedy answer: ``near`` (share unchanged) and ``near_changed`` over the counted prompts, and
    ``near_excluded`` (how many were prompts of the stream). Empty when the request has none.
    The one place the score is computed, for fresh records and recounted stored ones alike."""
    kept = counted(prompts, edited)
    fields: dict[str, Any] = {}
    if kept:
        fields["near"] = sum(prompt not in changed for prompt in kept) / len(kept)
        fields["near_changed"] = [prompt for prompt in kept if prompt in changed]
    if len(kept) < len(prompts):
        fields["near_excluded"] = len(prompts) - len(kept)
    return fields


def without_stream_prompts(records: Sequence[dict[str, Any]],
                           requests: Sequence[dict[str, Any]]) -> Optional[list[dict[str, Any]]]:
    """Records scored before near misses left out the stream's own prompts, scored as if they had.

    The greedy answers are the same either way; only which prompts count changes, so the records'
    ``near_changed`` lists give the new ``near`` exactly. None when a record cannot tell (it lost
    near misses but does not list them): such a chunk is scored again.
    """
    edited = stream_prompts(requests)
    upgraded = []
    for record, request in zip(records, requests):
        if record.get("near", 1.0) < 1.0 and "near_changed" not in record:
            return None
        new = {k: v for k, v in record.items() if k not in ("near", "near_changed", "near_excluded")}
        new.update(near_miss_fields(request.get("near_miss", []), set(record.get("near_changed", [])), edited))
        upgraded.append(new)
    return upgraded
