"""The checkpoint folder format both editors use: one JSON file naming one safetensors file.

Tensors go to safetensors (no pickle, so loading works under torch's safe loading); counters,
paths and texts go to JSON with a format name and version, checked before anything is loaded.

Writing is atomic: the tensors go to a new file whose name holds their SHA-256, then the JSON
(``<stem>.json``, which names that file and its digest) replaces the old one with ``os.replace``.
The JSON is the commit point: a crash or kill before it leaves the previous checkpoint intact, a
crash after it leaves the new one complete; files of older saves are removed only after it.
Reading checks the JSON, the digest and the safetensors header before a caller attaches anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any, Sequence

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from wise_plugin.hparams import HParamsError

logger = logging.getLogger("wise_plugin")


class CheckpointError(HParamsError):
    """A checkpoint folder cannot be written or read; the message says why, and what is unchanged."""


def write_atomic(path: str, data: bytes) -> None:
    """``data`` into ``path`` via a temporary file beside it, flushed to disk before the rename."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _sync_folder(path: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some systems; the renames are still atomic there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _own_files(stem: str) -> re.Pattern:
    """Names a save of ``stem`` writes: tensor files (also version 1's ``<stem>.safetensors``) and
    temporary files left by an interrupted save."""
    return re.compile(rf"^(?:{stem}(?:-[0-9a-f]{{16}})?\.safetensors|\.{stem}[.-].*\.tmp-\d+)$")


def write_checkpoint(path: str, stem: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write ``<path>/<stem>.json`` and the tensor file it names (the folder is created if needed);
    on failure the folder keeps its previous checkpoint and a :class:`CheckpointError` says why."""
    data = save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    tensor_file = f"{stem}-{digest[:16]}.safetensors"
    meta = {**meta, "tensor_file": tensor_file, "sha256": digest}
    try:
        os.makedirs(path, exist_ok=True)
        write_atomic(os.path.join(path, tensor_file), data)
        _sync_folder(path)
        write_atomic(os.path.join(path, f"{stem}.json"), json.dumps(meta, indent=1).encode("utf-8"))
        _sync_folder(path)
    except OSError as error:
        raise CheckpointError(f"could not write the checkpoint to {path!r} ({error}); the checkpoint that was there "
                              "before, if any, is unchanged.") from error
    stale = _own_files(stem)
    for name in os.listdir(path):
        if name != tensor_file and stale.match(name):
            try:
                os.remove(os.path.join(path, name))
            except OSError as error:  # a leftover file costs disk space only
                logger.warning("could not remove the old checkpoint file %s: %s", os.path.join(path, name), error)
    return path


def read_checkpoint(path: str, stem: str, fmt: str, versions: Sequence[int],
                    what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on CPU) and metadata of a folder written by :func:`write_checkpoint`, read completely
    and checked (format, version, digest) before they are returned; a :class:`CheckpointError` says
    what is wrong otherwise. Version 1 folders (``<stem>.safetensors``, no digest) still load."""
    meta_file = os.path.join(path, f"{stem}.json")
    if not os.path.isfile(meta_file):
        raise CheckpointError(f"load_path {path!r} is not a {what} checkpoint folder (it has no {stem}.json); "
                              f"point load_path at a folder written with save_path.")
    try:
        with open(meta_file, encoding="utf-8") as handle:
            meta: dict[str, Any] = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{meta_file} is damaged ({error}); the checkpoint cannot be read. Save it again "
                              "from the edited model, or restore the folder from a copy.") from error
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("version") not in versions:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_file} is not a {fmt} checkpoint of version {' or '.join(map(str, versions))} "
                              f"(found {found}).")
    tensor_name = meta.get("tensor_file", f"{stem}.safetensors")
    tensor_file = os.path.join(path, os.path.basename(str(tensor_name)))
    if not os.path.isfile(tensor_file):
        raise CheckpointError(f"load_path {path!r}: {stem}.json names {tensor_name}, which is missing; the folder "
                              "is incomplete. Save it again from the edited model.")
    with open(tensor_file, "rb") as handle:
        data = handle.read()
    if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"{tensor_file} is damaged (its SHA-256 differs from the one {stem}.json records); "
                              "the checkpoint cannot be read. Save it again, or restore the folder from a copy.")
    try:
        tensors = load_bytes(data)
    except Exception as error:  # safetensors raises its own error types for cut or foreign files
        raise CheckpointError(f"{tensor_file} is damaged ({error}); the checkpoint cannot be read.") from error
    return tensors, meta


def weight_fingerprint(weight: torch.Tensor, n: int = 256) -> torch.Tensor:
    """A small float32 summary of a weight (``n`` entries at fixed positions and the norm): enough
    to tell another model's weights from the saved ones, tolerant of a change of dtype."""
    flat = weight.detach().reshape(-1).float().cpu()
    # float32 positions, as saved checkpoints have them; past 2**24 entries (an embedding matrix of a
    # 49k-token vocabulary) the last one rounds up beyond the end, hence the clamp
    positions = torch.linspace(0, flat.numel() - 1, min(n, flat.numel())).long().clamp_(max=flat.numel() - 1)
    return torch.cat([flat[positions], flat.norm().reshape(1)])


def same_weights(saved: torch.Tensor, current: torch.Tensor) -> bool:
    """Whether two fingerprints come from the same weights (up to bfloat16 rounding)."""
    if saved.shape != current.shape:
        return False
    entries, norm = saved[:-1], float(saved[-1])
    scale = float(entries.abs().max().clamp_min(1e-12))
    return bool(torch.allclose(entries, current[:-1], rtol=1e-2, atol=1e-2 * scale)) and \
        abs(norm - float(current[-1])) <= 1e-2 * max(abs(norm), 1e-12)
