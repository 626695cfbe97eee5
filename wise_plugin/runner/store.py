"""JSON-lines files of the runner's results: one line per finished piece of work, keyed by ``key``.

``chunks.jsonl`` (a finished chunk per line) and ``baseline.jsonl`` (a request's unedited-model
scores per line) are appended as soon as each piece is done, so an interrupted run keeps
everything it finished; a last line cut short by the interruption is removed before the next
append, and that piece is done again.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

logger = logging.getLogger("wise_plugin")

RESULTS_FILE = "chunks.jsonl"


def json_ready(value: Any) -> Any:
    """JSON-ready copies of the host's score dicts (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ResultStore:
    """The lines of ``<out>/<name>`` by their ``key``; :meth:`add` appends one and syncs it to disk."""

    def __init__(self, out_dir: str, name: str = RESULTS_FILE) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, name)
        self.lines: dict[str, dict[str, Any]] = {}
        if os.path.isfile(self.path):
            self._repair()
            with open(self.path, encoding="utf-8") as handle:
                for number, text in enumerate(handle, 1):
                    try:
                        line = json.loads(text)
                        self.lines[line["key"]] = line
                    except (json.JSONDecodeError, KeyError, TypeError):
                        logger.warning("%s: line %d is not a stored result and is ignored", self.path, number)
            logger.info("%s holds %d finished results", self.path, len(self.lines))

    def _repair(self) -> None:
        """Cut off a last line that an interrupted append left without its newline, so the next
        append starts on a line of its own (what it held is not counted as done and runs again)."""
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if not data or data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        logger.warning("%s: the last line was cut short by an interruption (%d bytes); removed, it runs again",
                       self.path, len(data) - keep)

    def __contains__(self, key: str) -> bool:
        return key in self.lines

    def add(self, line: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.lines[line["key"]] = line
