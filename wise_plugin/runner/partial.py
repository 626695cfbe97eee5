"""Resuming inside a chunk: the state of a long stream (1,000 edits and more) every k edits.

A chunk of the lifelong protocol scores every request on the unedited model, edits them all, then
scores them again; a 1,000-edit chunk runs for hours. With ``--checkpoint-every k`` the runner
keeps, in ``<out>/partial/<chunk>/``, what the rest of the chunk needs: the scores taken before
the edits, the editor's state after the last multiple of k and after the last edit (the plugin's
own checkpoint), the seconds of each edit so far, the random-number states and, once the edits are
done, each request's record as soon as it is scored (``scored.jsonl``: scoring 1,000 edited
requests takes about an hour). Rerunning the same command loads it into a fresh model and goes on
from there, with the result of an uninterrupted run.

``progress.json`` is the commit point: it names the editor folder it belongs to, is written
(atomically) only after that folder is complete, and older folders are removed only after it.
Only the plugin's editors (WISE, LEMoE) have a checkpoint; a host editor's chunk starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from typing import Any, Optional

import numpy as np
import torch

from wise_plugin.core.checkpoint_files import write_atomic
from wise_plugin.runner.store import ResultStore, json_ready

logger = logging.getLogger("wise_plugin")

PARTIAL_DIR = "partial"
PROGRESS = "progress.json"
SCORED = "scored.jsonl"  # records scored after the last edit, one per line, keyed by record index


class PartialChunk:
    """The saved progress of one chunk (see the module docstring)."""

    def __init__(self, out_dir: str, key: str, every: int, parts: tuple[Any, Any, Any, Any]) -> None:
        self.folder = self.folder_of(out_dir, key)
        self.every = every
        self.find_layer, self.detach, self.save_editor, self.load_editor = parts
        self.before: Optional[list[Any]] = None
        self.near_before: Optional[list[Any]] = None
        self.before_seconds = 0.0  # time the scores before the edits took (the scoring time of the chunk)
        self.edit_seconds: list[float] = []
        self._scored: Optional[ResultStore] = None

    @staticmethod
    def folder_of(out_dir: str, key: str) -> str:
        """Where a chunk's progress lives: chunk keys hold ``|`` and ``=``, so the folder is named by a hash."""
        return os.path.join(out_dir, PARTIAL_DIR, hashlib.sha256(key.encode()).hexdigest()[:16])

    @staticmethod
    def remove(out_dir: str, key: str) -> None:
        """Drop the saved progress of a chunk that is finished (or never had any)."""
        shutil.rmtree(PartialChunk.folder_of(out_dir, key), ignore_errors=True)

    def _progress(self) -> Optional[dict[str, Any]]:
        path = os.path.join(self.folder, PROGRESS)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (ValueError, OSError) as error:
            logger.warning("%s cannot be read (%s); the chunk starts over", path, error)
            return None

    def resume(self, editor: Any) -> int:
        """Load the saved progress into ``editor`` (a fresh one); returns the edits already done."""
        progress = self._progress()
        if progress is None:
            return 0
        self.before, self.near_before = progress["before"], progress["near_before"]
        self.before_seconds = float(progress.get("before_seconds", 0.0))
        done = int(progress["edits_done"])
        if done:
            self.load_editor(editor.model, editor.hparams, os.path.join(self.folder, progress["editor"]))
            self.edit_seconds = [float(s) for s in progress["edit_seconds"]][:done]
            random.setstate((progress["random"][0], tuple(progress["random"][1]), progress["random"][2]))
            state = progress["numpy"]
            np.random.set_state((state[0], np.array(state[1], dtype=np.uint32), *state[2:]))
            torch.set_rng_state(torch.tensor(progress["torch"], dtype=torch.uint8))
        if os.path.isfile(os.path.join(self.folder, SCORED)):
            self._scored = ResultStore(self.folder, SCORED)
        logger.info("resuming a chunk from %s: %d edits done, %d requests scored after them", self.folder, done,
                    len(self._scored.lines) if self._scored is not None else 0)
        return done

    def _commit(self, done: int, editor_folder: Optional[str]) -> None:
        numpy_state = np.random.get_state()
        progress = {"edits_done": done, "editor": editor_folder, "edit_seconds": self.edit_seconds[:done],
                    "before": self.before, "near_before": self.near_before, "before_seconds": self.before_seconds,
                    "random": list(random.getstate()), "torch": torch.get_rng_state().tolist(),
                    "numpy": [numpy_state[0], numpy_state[1].tolist(), *[json_ready(v) for v in numpy_state[2:]]]}
        write_atomic(os.path.join(self.folder, PROGRESS), json.dumps(progress).encode("utf-8"))
        for name in os.listdir(self.folder):  # editor folders of earlier saves
            if name.startswith("editor-") and name != editor_folder:
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)

    def save_before(self, before: list[Any], near_before: list[Any], seconds: float) -> None:
        """Keep the scores taken on the unedited model (a resumed chunk cannot take them again)."""
        os.makedirs(self.folder, exist_ok=True)
        self.before, self.near_before = json_ready(before), json_ready(near_before)
        self.before_seconds = seconds
        self._commit(0, None)

    def after_edit(self, editor: Any, done: int, total: int) -> None:
        """Save the editor every ``every`` edits and after the last one (the scoring that follows can
        then be resumed without editing again)."""
        if done % self.every and done < total:
            return
        name = f"editor-{done}"
        self.save_editor(editor.model, editor.hparams, os.path.join(self.folder, name))
        self._commit(done, name)
        logger.info("chunk progress saved after %d of %d edits (%s)", done, total, self.folder)

    def scored_record(self, index: int) -> Optional[dict[str, Any]]:
        """The record of request ``index`` if an interrupted run scored it after the last edit."""
        if self._scored is None:
            return None
        line = self._scored.lines.get(str(index))
        return None if line is None else {k: v for k, v in line.items() if k != "key"}

    def keep_record(self, record: dict[str, Any]) -> None:
        """Store a record scored after the last edit, so a rerun does not score it again."""
        if self._scored is None:
            self._scored = ResultStore(self.folder, SCORED)
        self._scored.add({**json_ready(record), "key": str(record["index"])})
