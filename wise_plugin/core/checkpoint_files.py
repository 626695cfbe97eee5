"""The checkpoint folder format both editors use: one safetensors file and one JSON file.

Tensors go to safetensors (no pickle, so loading works under torch's safe loading); counters,
paths and texts go to JSON with a format name and version, checked before anything is loaded.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from wise_plugin.hparams import HParamsError


def write_checkpoint(path: str, stem: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """``<path>/<stem>.safetensors`` and ``<path>/<stem>.json`` (the folder is created if needed)."""
    os.makedirs(path, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.path.join(path, f"{stem}.safetensors"))
    with open(os.path.join(path, f"{stem}.json"), "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=1)
    return path


def read_checkpoint(path: str, stem: str, fmt: str, version: int, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on CPU) and metadata of a folder written by :func:`write_checkpoint`; a folder
    without both files, or of another format or version, raises an ``HParamsError`` saying so."""
    tensor_file, meta_file = os.path.join(path, f"{stem}.safetensors"), os.path.join(path, f"{stem}.json")
    if not (os.path.isfile(tensor_file) and os.path.isfile(meta_file)):
        raise HParamsError(f"load_path {path!r} is not a {what} checkpoint folder "
                           f"(needs {stem}.safetensors and {stem}.json).")
    with open(meta_file, encoding="utf-8") as handle:
        meta: dict[str, Any] = json.load(handle)
    if meta.get("format") != fmt or meta.get("version") != version:
        raise HParamsError(f"{meta_file} is not a {fmt} checkpoint of version {version}.")
    return load_file(tensor_file, device="cpu"), meta
