"""Lifelong evaluation with EasyEdit's own metrics: edit T requests, then score all T.

The host editors score each edit right after making it; the lifelong number of the WISE paper
scores every edit after the last one, with locality measured against the unedited model.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from wise_plugin.host import import_host

logger = logging.getLogger("wise_plugin")


def zsre_requests(path: str, count: Optional[int] = None, start: int = 0) -> list[dict[str, Any]]:
    """EasyEdit request dicts from a ZsRE file in the WISE layout (src/alt/rephrase/loc/loc_ans)."""
    with open(path, encoding="utf-8") as handle:
        records = json.load(handle)
    stop = None if count is None else start + count
    if count is not None and stop > len(records):
        raise ValueError(f"{path} holds {len(records)} records; asked for {count} from {start}.")
    requests = []
    for record in records[start:stop]:
        missing = [k for k in ("src", "alt", "rephrase", "loc", "loc_ans") if k not in record]
        if missing:
            raise ValueError(f"{path}: a record lacks the ZsRE key(s) {missing}.")
        requests.append({
            "prompt": record["src"],
            "target_new": record["alt"],
            "ground_truth": (record.get("answers") or ["<|endoftext|>"])[0],
            "rephrase_prompt": record["rephrase"],
            "subject": record.get("subject"),
            "locality": {"neighborhood": {"prompt": record["loc"], "ground_truth": record["loc_ans"]}},
            "portability": {},
        })
    return requests


def _score(model: Any, editor: Any, request: dict[str, Any]) -> dict[str, Any]:
    from easyeditor import compute_edit_quality

    with torch.no_grad():
        return compute_edit_quality(model, editor.model_name, editor.hparams, editor.tok, request, editor.hparams.device)


def edit_via_editor(editor: Any, requests: Sequence[dict[str, Any]]) -> None:
    """Send ``requests`` through ``BaseEditor.edit`` in order (one host call per request batch)."""
    editor.edit(
        prompts=[r["prompt"] for r in requests],
        target_new=[r["target_new"] for r in requests],
        ground_truth=[r["ground_truth"] for r in requests],
        rephrase_prompts=[r["rephrase_prompt"] for r in requests],
        locality_inputs={
            "neighborhood": {
                "prompt": [r["locality"]["neighborhood"]["prompt"] for r in requests],
                "ground_truth": [r["locality"]["neighborhood"]["ground_truth"] for r in requests],
            }
        },
        keep_original_weight=False,
        verbose=False,
    )


def lifelong_evaluate(editor: Any, requests: Sequence[dict[str, Any]], edited_before: int = 0) -> dict[str, Any]:
    """Score ``requests`` before, edit them all through ``editor``, then score all of them again.

    ``editor.hparams.lifelong`` must be true so the host does not undo each edit. With
    ``edited_before = k`` the first k requests are already in a checkpoint that the first edit
    call loads (``hparams.load_path``): only the rest are edited, all are scored. Returns the means
    (rewrite_acc, rephrase_acc, locality), per-request records and timings.
    """
    import_host()
    if not getattr(editor.hparams, "lifelong", False):
        raise ValueError("lifelong_evaluate needs hparams.lifelong = True, else the host undoes every edit.")
    pre = [_score(editor.model, editor, r) for r in tqdm(requests, desc="scoring before edits", unit="edit")]
    start = time.perf_counter()
    if not 0 <= edited_before < len(requests):
        raise ValueError(f"edited_before must be in [0, {len(requests)}), got {edited_before}.")
    edit_via_editor(editor, requests[edited_before:])
    edit_seconds = time.perf_counter() - start
    records = []
    for request, before in tqdm(list(zip(requests, pre)), desc="scoring after all edits", unit="edit"):
        after = _score(editor.model, editor, request)
        locality = {
            key: float(np.mean(np.equal(after["locality"][f"{key}_output"], before["locality"][f"{key}_output"])))
            for key in request["locality"]
        }
        records.append({
            "prompt": request["prompt"],
            "target_new": request["target_new"],
            "rewrite_acc": float(np.mean(after["rewrite_acc"])),
            "rephrase_acc": float(np.mean(after["rephrase_acc"])) if "rephrase_acc" in after else None,
            "locality": float(np.mean(list(locality.values()))) if locality else None,
            "pre_rewrite_acc": float(np.mean(before["rewrite_acc"])),
        })
    mean = lambda key: float(np.mean([r[key] for r in records if r[key] is not None]))  # noqa: E731
    return {
        "n": len(records),
        "rewrite_acc": mean("rewrite_acc"),
        "rephrase_acc": mean("rephrase_acc"),
        "locality": mean("locality"),
        "edit_seconds_per_edit": edit_seconds / (len(records) - edited_before),
        "records": records,
    }


@torch.no_grad()
def greedy_answer(model: Any, tok: Any, prompt: str, max_new_tokens: int = 12) -> str:
    """Greedy continuation of ``prompt`` (with the KV cache, as users generate)."""
    device = next(model.parameters()).device
    encoded = tok(prompt, return_tensors="pt").to(device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tok.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()
