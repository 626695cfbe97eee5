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
from typing import Any, Collection, Sequence

import numpy as np

from wise_plugin.runner.errors import RunnerInputError

logger = logging.getLogger("wise_plugin")

RESULTS_FILE = "chunks.jsonl"
CHUNK_TAGS = ("editor", "T", "chunk")  # what results.json adds to each record to name its chunk


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


def chunk_lines_of(path: str) -> list[dict[str, Any]]:
    """The finished chunk lines a ``results.json`` holds: its ``chunks`` entries (a chunk's key,
    costs and seconds) joined again with their records."""
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
    except FileNotFoundError:
        raise RunnerInputError(f"--import-results {path}: no such file; give the results.json of an earlier run.") from None
    except json.JSONDecodeError as error:
        raise RunnerInputError(f"--import-results {path}: not JSON ({error}); give the results.json of an earlier run.") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("records"), list):
        raise RunnerInputError(f"--import-results {path}: not a results.json written by wise-plugin compare.")
    if not isinstance(saved.get("chunks"), list):
        raise RunnerInputError(f"--import-results {path}: it has no chunk keys (results.json files written before "
                               "--import-results existed lack them), so its chunks cannot be matched to this run's settings; "
                               "rerun those chunks instead.")
    by_chunk: dict[tuple, list[dict[str, Any]]] = {}
    for record in saved["records"]:
        tag = tuple(record.get(name) for name in CHUNK_TAGS)
        by_chunk.setdefault(tag, []).append({k: v for k, v in record.items() if k not in CHUNK_TAGS})
    return [{**chunk, "records": by_chunk.get(tuple(chunk.get(name) for name in CHUNK_TAGS), [])}
            for chunk in saved["chunks"]]


def import_results(store: ResultStore, paths: Sequence[str], wanted: Collection[str]) -> int:
    """Add to ``store`` the chunks of earlier runs' ``results.json`` files whose key is in ``wanted``.

    A key names the editor's config, model, data and scoring settings (see
    :func:`~wise_plugin.runner.protocol.chunk_key`), so a chunk is only taken where rerunning it
    here would edit and score the same requests the same way; others are left out and logged.
    Returns the number of chunks added."""
    added = 0
    for path in paths:
        lines = chunk_lines_of(path)
        usable = [line for line in lines if line.get("key") in wanted]
        stored = [line for line in usable if line["key"] in store]
        # a chunk whose records are not all there (an edited file) is run again rather than taken
        new = [line for line in usable if line["key"] not in store and len(line["records"]) == line.get("T")]
        for line in new:
            store.add(line)
        added += len(new)
        logger.info("%s: %d chunks imported, %d already stored, %d incomplete, %d not part of this run (other "
                    "editors, T, data or settings)", path, len(new), len(stored), len(usable) - len(new) - len(stored),
                    len(lines) - len(usable))
    return added
