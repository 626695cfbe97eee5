"""Editors of a comparison: one hparams YAML each, checked up front, built fresh for every chunk.

Any editor the host's ``ALG_DICT`` knows can be compared, as long as its hyper-parameter class is
known here (the plugin's own classes and the host's FT, LoRA, ROME, MEMIT, KN). The host's classes
cannot read ``model_name: embedded:smollm2-135m``, so the name is resolved here for all of them.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from wise_plugin.hparams import HParamsError, build, check_model_name, read_yaml, resolve_model_name
from wise_plugin.host import alg_dict, base_editor, host_flavour, import_host
from wise_plugin.runner.errors import RunnerInputError

# alg_name -> "module:class" of its hyper-parameters; the plugin's classes validate themselves.
HPARAMS_CLASSES: dict[str, str] = {
    "WISE": "wise_plugin.wise.config:WISEHyperParams",
    "LEMoE": "wise_plugin.lemoe.config:LEMoEHyperParams",
    "FT": "easyeditor:FTHyperParams",
    "LoRA": "easyeditor:LoRAHyperParams",
    "ROME": "easyeditor:ROMEHyperParams",
    "MEMIT": "easyeditor:MEMITHyperParams",
    "KN": "easyeditor:KNHyperParams",
    # source-repository host only: its own WISE (moved aside when ours registers) and GRACE
    "WISE-upstream": "easyeditor:WISEHyperParams",
    "GRACE": "easyeditor:GraceHyperParams",
}
SOURCE_HOST_ONLY = ("WISE-upstream", "GRACE")
_PLUGIN_MODULE = "wise_plugin."
# Editors the package-index host lists but cannot run here (checked on this host, peft 0.21).
PYPI_HOST_BROKEN: dict[str, str] = {
    "LoRA": "the package-index EasyEdit's LoRA builds peft's AdaLoraConfig without total_step, which peft "
            ">= 0.13 rejects, and its LoRAHyperParams has no model_parallel, which BaseEditor reads",
}

ModelFactory = Callable[[], tuple[Any, Any]]


@dataclass
class EditorSpec:
    """One editor of a comparison: its label, YAML, hyper-parameters and a fingerprint of them."""

    label: str
    path: str
    alg_name: str
    hparams: Any
    model_name: str
    fingerprint: str


def _host_hparams_class(alg_name: str) -> Optional[str]:
    """``easyeditor:<Name>HyperParams`` from the same host package as ``ALG_DICT[alg_name]`` (e.g.
    ``easyeditor.models.grace`` holds both ``apply_grace_to_model`` and ``GraceHyperParams``), so
    any host editor can be compared without a table entry (multimodal variants aside); None when
    there is no single match."""
    apply_fn = alg_dict().get(alg_name)
    package = getattr(apply_fn, "__module__", "").rpartition(".")[0]
    if not package.startswith("easyeditor."):
        return None
    host = import_host()
    found = [name for name in dir(host) if name.endswith("HyperParams") and "Multimodal" not in name
             and isinstance(getattr(host, name), type) and getattr(host, name).__module__.rpartition(".")[0] == package]
    return f"easyeditor:{found[0]}" if len(found) == 1 else None


def _hparams_class(alg_name: str, path: str) -> type:
    target = HPARAMS_CLASSES.get(alg_name) or _host_hparams_class(alg_name)
    if target is None:
        raise RunnerInputError(
            f"{path}: the runner does not know the hyper-parameter class of alg_name {alg_name!r}; "
            f"it can compare {', '.join(sorted(HPARAMS_CLASSES))} and host editors whose package has one "
            "*HyperParams class."
        )
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise RunnerInputError(f"{path}: alg_name {alg_name!r} needs {target}, which cannot be imported ({error}).") \
            from error


def _host_config(config: dict[str, Any], alg_name: str) -> dict[str, Any]:
    """The YAML keys as the host's hyper-parameter class takes them: the host's WISE reads
    ``act_margin`` as its three fields (its own ``from_hparams`` does this split)."""
    if alg_name == "WISE-upstream" and isinstance(config.get("act_margin"), list):
        config["alpha"], config["beta"], config["gamma"] = config.pop("act_margin")
    if alg_name == "FT" and host_flavour() == "pypi" and "objective_optimization" in config:
        # the package-index FT has no such key: it always reads the loss at the last prompt token
        if config["objective_optimization"] != "prompt_last":
            raise RunnerInputError(f"objective_optimization {config['objective_optimization']!r}: the package-index "
                                   "EasyEdit's FT only has 'prompt_last'; set that or use the source-repository host.")
        del config["objective_optimization"]
    return config


def _check_alg_name(alg_name: Any, path: str) -> str:
    if alg_name in PYPI_HOST_BROKEN and host_flavour() == "pypi":
        raise RunnerInputError(f"{path}: alg_name {alg_name!r} cannot run on this host: "
                               f"{PYPI_HOST_BROKEN[alg_name]}. Use the source-repository EasyEdit, or another editor.")
    known = sorted(alg_dict())
    if alg_name in SOURCE_HOST_ONLY and host_flavour() != "source":
        raise RunnerInputError(f"{path}: alg_name {alg_name!r} is an editor of the source-repository EasyEdit; "
                               "run with `wise-plugin compare --easyedit PATH` (a clone of that repository) "
                               "in an environment made for it (`make install-source`).")
    if not isinstance(alg_name, str) or alg_name not in known:
        close = difflib.get_close_matches(str(alg_name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RunnerInputError(
            f"{path}: alg_name {alg_name!r} is not an editor the host EasyEdit knows.{hint} "
            f"Set alg_name to one of {', '.join(known)}."
        )
    return alg_name


def _model_key(model_name: Any) -> str:
    """The identity of a model name for the same-model check (real paths for local folders)."""
    name = str(model_name)
    expanded = os.path.expanduser(name)
    return os.path.realpath(expanded) if os.path.exists(expanded) else name


def load_spec(path: str, label: Optional[str] = None) -> EditorSpec:
    """Read and validate one hparams YAML into an :class:`EditorSpec` (nothing is loaded yet)."""
    path = os.fspath(path)
    config = read_yaml(path)
    alg_name = _check_alg_name(config.get("alg_name"), path)
    cls = _hparams_class(alg_name, path)
    if cls.__module__.startswith(_PLUGIN_MODULE):
        hparams = cls.from_hparams(path)
    else:
        hparams = build(cls, _host_config(dict(config), alg_name), path, alg_name)
    hparams.model_name = resolve_model_name(hparams.model_name)
    name = hparams.model_name
    try:
        check_model_name(name)
    except HParamsError as error:
        raise HParamsError(f"{path}: {error}") from error
    # Plugin editors keep edits across BaseEditor.edit calls only with lifelong set; the host's
    # editors keep them anyway when called with keep_original_weight=False.
    hparams.lifelong = True
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return EditorSpec(label or alg_name, path, alg_name, hparams, _model_key(name), digest)


def load_specs(paths: Sequence[str]) -> list[EditorSpec]:
    """Specs of all ``paths``, with distinct labels, all editing the same model (else an error)."""
    if not paths:
        raise RunnerInputError("no hparams YAML given; pass at least one with --hparams.")
    specs = [load_spec(p) for p in paths]
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.label] = counts.get(spec.label, 0) + 1
    for spec in specs:
        if counts[spec.label] > 1:  # two YAMLs of one editor: tell them apart by file name
            spec.label = f"{spec.alg_name} ({os.path.splitext(os.path.basename(spec.path))[0]})"
    if len({s.label for s in specs}) < len(specs):
        raise RunnerInputError("two --hparams files share editor and file name; rename one of them.")
    first = specs[0]
    for spec in specs[1:]:
        if spec.model_name != first.model_name:
            raise RunnerInputError(
                f"{spec.path} edits model {spec.model_name!r}, but {first.path} edits {first.model_name!r}. "
                "A comparison needs one model: set the same model_name in every hparams file."
            )
    return specs


def _host_logger(base_editor_class: type) -> Optional[logging.Logger]:
    """The logger of the host module that defines ``BaseEditor`` (``LOG`` in both hosts)."""
    log = getattr(sys.modules.get(base_editor_class.__module__), "LOG", None)
    return log if isinstance(log, logging.Logger) else None


def build_editor(spec: EditorSpec, model_factory: Optional[ModelFactory] = None) -> Any:
    """A fresh host ``BaseEditor`` for ``spec``: the model as stored, no edits from earlier chunks.

    ``model_factory`` (tests) returns a ``(model, tokenizer)`` pair instead of loading ``model_name``;
    the name is put back afterwards, because the host's metrics read ``model_name.lower()``.
    The host adds a log file handler and a console handler to its logger in every ``BaseEditor``;
    a comparison builds one editor per chunk (1,000 at T=1 on 1,000 requests), so the handlers of
    later builds are closed and removed: each host line is logged once, and no file stays open per chunk.
    """
    BaseEditor = base_editor()
    log = _host_logger(BaseEditor)
    earlier = list(log.handlers) if log is not None else []
    try:
        hparams = copy.deepcopy(spec.hparams)
        if model_factory is None:
            return BaseEditor.from_hparams(hparams)
        name = hparams.model_name
        hparams.model_name = model_factory()
        editor = BaseEditor.from_hparams(hparams)
        hparams.model_name = editor.model_name = name
        return editor
    finally:
        if log is not None and earlier:  # the first build's handlers stay; later builds add duplicates
            for handler in [h for h in log.handlers if h not in earlier]:
                log.removeHandler(handler)
                handler.close()
