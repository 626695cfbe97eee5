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
from typing import Any, Callable, Sequence

from wise_plugin.host import host_root
from wise_plugin.runner.store import ResultStore, json_ready

BASELINE_FILE = "baseline.jsonl"
BASELINE_VERSION = 1  # enters every key: lines written by an older scoring are taken again

Scores = tuple[dict[str, Any], list[list[int]]]  # compute_edit_quality's dict, near-miss greedy ids


def scoring_profile(hparams: Any, model_name: str) -> dict[str, Any]:
    """What of an editor's configuration reaches the host's scoring of the unedited model."""
    return {"model": model_name, "grace": getattr(hparams, "alg_name", None) == "GRACE",
            "evaluation_type": getattr(hparams, "evaluation_type", None),
            "dtype": "fp16" if getattr(hparams, "fp16", False) else "default",
            "chat": bool(getattr(hparams, "use_chat_template", False))}


class BaselineScores:
    """Unedited-model scores by request, read from and appended to ``<out>/baseline.jsonl``."""

    def __init__(self, out_dir: str, settings: dict[str, Any]) -> None:
        self.store = ResultStore(out_dir, BASELINE_FILE)
        self.path = self.store.path
        self.settings = {**settings, "host": host_root(), "version": BASELINE_VERSION}
        self.hits = 0

    def key(self, request: dict[str, Any], profile: dict[str, Any]) -> str:
        content = json.dumps({"request": request, "profile": profile, **self.settings}, sort_keys=True, default=str)
        return hashlib.sha256(content.encode()).hexdigest()[:24]

    def get(self, request: dict[str, Any], profile: dict[str, Any], take: Callable[[], Scores]) -> Scores:
        """The stored scores of ``request``, or ``take()``'s, stored before they are returned."""
        return self.get_many([request], profile, lambda missing: [take()])[0]

    def get_many(self, requests: Sequence[dict[str, Any]], profile: dict[str, Any],
                 take: Callable[[list[dict[str, Any]]], list[Scores]]) -> list[Scores]:
        """The stored scores of each request; those not stored are taken together by ``take`` (which
        gets them in order and returns one ``Scores`` each) and stored before they are returned."""
        keys = [self.key(request, profile) for request in requests]
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        self.hits += len(requests) - len(missing)
        if missing:
            for i, (score, near) in zip(missing, take([requests[i] for i in missing])):
                if keys[i] not in self.store:  # a request that occurs twice in the block is stored once
                    self.store.add({"key": keys[i], "score": json_ready(score), "near": json_ready(near)})
        return [(self.store.lines[key]["score"], self.store.lines[key]["near"]) for key in keys]
