"""Scores of the unedited model, taken once per request and shared by every chunk that needs them.

Every chunk of the lifelong protocol starts from the unedited model and scores its requests before
the first edit (locality and near-miss locality are agreement with those answers). A sweep such as
``--T 1 10 100 599`` over three editors would score each request twelve times on the same weights;
a 599-record ZsRE chunk takes about 25 minutes for that on the 2-core CPU. This module keeps each
request's unedited scores in ``<out>/baseline.jsonl`` (one JSON line per request, appended as soon
as it is taken), so that a request is scored on the unedited model once per output folder.

Two editors share a score only when nothing that shapes it differs: the host package, the model,
the host's scoring branches that depend on the editor (``alg_name == "GRACE"`` switches the host to
free generation; ``evaluation_type``), the dataset's metric and the runner's scoring settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable

from wise_plugin.runner.partial import json_ready

logger = logging.getLogger("wise_plugin")

BASELINE_FILE = "baseline.jsonl"
BASELINE_VERSION = 1  # enters every key: lines written by an older scoring are taken again

Scores = tuple[dict[str, Any], list[list[int]]]  # compute_edit_quality's dict, near-miss greedy ids


def _host_identity() -> str:
    """Where the loaded EasyEdit lives (a source clone and the package-index release score alike
    today, but nothing guarantees it)."""
    import importlib.util

    spec = importlib.util.find_spec("easyeditor")
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else "none"


def scoring_profile(hparams: Any, model_name: str) -> dict[str, Any]:
    """What of an editor's configuration reaches the host's scoring of the unedited model."""
    return {"model": model_name, "grace": getattr(hparams, "alg_name", None) == "GRACE",
            "evaluation_type": getattr(hparams, "evaluation_type", None),
            "dtype": "fp16" if getattr(hparams, "fp16", False) else "default",
            "chat": bool(getattr(hparams, "use_chat_template", False))}


class BaselineScores:
    """Unedited-model scores by request, read from and appended to ``<out>/baseline.jsonl``."""

    def __init__(self, out_dir: str, settings: dict[str, Any]) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, BASELINE_FILE)
        self.settings = {**settings, "host": _host_identity(), "version": BASELINE_VERSION}
        self.lines: dict[str, Scores] = {}
        self.hits = 0
        if os.path.isfile(self.path):
            self._read()

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, 1):
                try:
                    line = json.loads(text)
                    self.lines[line["key"]] = (line["score"], line["near"])
                except (json.JSONDecodeError, KeyError, TypeError):  # e.g. a line cut by an interruption
                    logger.warning("%s: line %d is not a score and is ignored (it is taken again)", self.path, number)

    def key(self, request: dict[str, Any], profile: dict[str, Any]) -> str:
        content = json.dumps({"request": request, "profile": profile, **self.settings}, sort_keys=True, default=str)
        return hashlib.sha256(content.encode()).hexdigest()[:24]

    def get(self, request: dict[str, Any], profile: dict[str, Any], take: Callable[[], Scores]) -> Scores:
        """The stored scores of ``request``, or ``take()``'s, stored before they are returned."""
        key = self.key(request, profile)
        if key in self.lines:
            self.hits += 1
            return self.lines[key]
        score, near = take()
        scores = (json_ready(score), json_ready(near))
        with open(self.path, "a", encoding="utf-8") as handle:
            if handle.tell() and not self._ends_with_newline():
                handle.write("\n")  # a line cut short by an interruption stays on its own line
            handle.write(json.dumps({"key": key, "score": scores[0], "near": scores[1]}) + "\n")
        self.lines[key] = scores
        return scores

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
