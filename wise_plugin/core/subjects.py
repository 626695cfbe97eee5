"""The subject of an edit request: what anchors a memory to its edits (:mod:`wise_plugin.core.anchors`).

It is the request's ``subject`` (EasyEdit puts it in the request when ``edit(..., subject=...)``
names it) or, without one, a guess from the prompt.
"""

from __future__ import annotations

import re
from typing import Any, Optional

# Words that never make a subject on their own (sentence starts, question words, function words).
_FUNCTION_WORDS = frozenset("""
a an the of in on at to for from by with and or but is are was were be been being has have had do does did
what which who whom whose when where why how that this these those it its their his her our your my as into
than then there here not no yes can could will would shall should may might must about after before during
""".split())
_WORD = re.compile(r"[^\W\d_][\w'\-.]*", re.UNICODE)


def guess_subject(prompt: str) -> Optional[str]:
    """The prompt's likely subject when the request names none.

    The longest run of capitalised words that are not function words ("What university did Watts
    Humphrey attend?" -> "Watts Humphrey"; the later run on a tie); failing that, the last content word before the
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

