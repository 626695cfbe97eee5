"""Near-miss negatives made at edit time from the request itself: its prompt with the subject
swapped for other names.

A side memory that fires on "The mother tongue of Danielle Darrieux is" also fires on "The mother
tongue of Léon Blum is" unless training shows it the difference: the two prompts share the
relation's tokens and differ only in the subject. These rows go to the routing loss as irrelevant
inputs (and, for LEMoE, to the gate), so the memory learns to key on the subject. They are built
from the request's ``subject`` (EasyEdit puts it in the request when ``edit(..., subject=...)``
names it) or, without one, from a guess at the prompt's subject; the substitutes are a fixed
built-in list, never evaluation data.
"""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Optional

# Words that never make a subject on their own (sentence starts, question words, function words).
_FUNCTION_WORDS = frozenset("""
a an the of in on at to for from by with and or but is are was were be been being has have had do does did
what which who whom whose when where why how that this these those it its their his her our your my as into
than then there here not no yes can could will would shall should may might must about after before during
""".split())
_WORD = re.compile(r"[^\W\d_][\w'\-.]*", re.UNICODE)


@lru_cache(maxsize=1)
def _substitutes() -> dict[str, tuple[str, ...]]:
    with resources.as_file(resources.files("wise_plugin") / "data" / "substitutes.json") as path:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    return {kind: tuple(values) for kind, values in data.items()}


def guess_subject(prompt: str) -> Optional[str]:
    """The prompt's likely subject when the request names none.

    The longest run of capitalised words that does not start the sentence ("What university did
    Watts Humphrey attend?" -> "Watts Humphrey"); failing that, the last content word before the
    prompt's closing function words ("The chemical symbol for gold is" -> "gold"). None when the
    prompt has no content word.
    """
    words = [(m.group(0).rstrip(".'-"), m.start()) for m in _WORD.finditer(prompt)]
    runs: list[list[tuple[str, int]]] = []
    previous = -2  # index of the last capitalised word seen
    for index, (word, start) in enumerate(words):
        if word[:1].isupper() and word.lower() not in _FUNCTION_WORDS:
            if previous == index - 1:
                runs[-1].append((word, start))
            else:
                runs.append([(word, start)])
            previous = index
    if runs:
        best = max(runs, key=lambda run: (len(run), run[0][1]))
        first, last = best[0], best[-1]
        return prompt[first[1]:last[1] + len(last[0])]
    content = [word for word, _ in words if word.lower() not in _FUNCTION_WORDS and len(word) > 1]
    return content[-1] if content else None


def request_subject(request: dict[str, Any]) -> Optional[str]:
    """The request's ``subject`` when it occurs in the prompt, else ``guess_subject``."""
    subject = request.get("subject")
    prompt = request["prompt"]
    if isinstance(subject, str) and subject.strip() and subject in prompt:
        return subject
    return guess_subject(prompt)


def near_miss_texts(request: dict[str, Any], count: int, seed: int) -> list[str]:
    """``count`` prompts of the request with its subject swapped for built-in names. Empty when
    ``count`` is 0 or no subject is found.

    Prompts only: followed by the new target, a swapped row's target tokens look like the edit's
    own to the side memory, and asking it to stay silent there kept edits from being learned.
    """
    subject = request_subject(request)
    if count <= 0 or not subject:
        return []
    kind = "names" if subject[:1].isupper() else "nouns"
    pool = [s for s in _substitutes()[kind] if s.lower() != subject.lower() and subject not in s and s not in subject]
    chosen = random.Random(seed).sample(pool, k=min(count, len(pool)))
    return [request["prompt"].replace(subject, other, 1) for other in chosen]
