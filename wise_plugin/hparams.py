"""Loading editor hyper-parameters from YAML with errors that say what to change."""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class HParamsError(ValueError):
    """A hyper-parameter file or value is wrong; the message says which and how to fix it."""


@dataclasses.dataclass
class HyperParams:
    """Base of the plugin's hyper-parameter classes, with what both hosts' ``HyperParams`` offer
    (``to_dict``, ``from_json``), so the editors' options import without EasyEdit."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, path: str) -> Any:
        import json

        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))


RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")  # the shipped YAMLs (package data)


def shipped_recipes() -> list[str]:
    """Names of the shipped hyper-parameter files, e.g. ``WISE/smollm2-135m``."""
    names = []
    for folder in sorted(os.listdir(RECIPES)):
        if os.path.isdir(os.path.join(RECIPES, folder)):
            names += [f"{folder}/{file[:-5]}" for file in sorted(os.listdir(os.path.join(RECIPES, folder)))
                      if file.endswith(".yaml")]
    return names


def find_hparams(path: str) -> str:
    """The YAML file ``path`` names: a file (``.yaml`` appended when missing, as upstream does), or a
    shipped recipe by name (``WISE/smollm2-135m``, also ``hparams/WISE/smollm2-135m.yaml`` outside a
    checkout), so the same names work from a source checkout and from an installed wheel."""
    path = os.fspath(path)
    for candidate in (path, path + ".yaml"):
        if os.path.isfile(candidate):
            return candidate
    name = path.removeprefix("hparams/").removesuffix(".yaml")
    shipped = os.path.join(RECIPES, *name.split("/")) + ".yaml"
    if os.path.isfile(shipped):
        return shipped
    raise HParamsError(f"hparams file not found: {path!r}. Pass the path of a YAML file or the name of a shipped "
                       f"one: {', '.join(shipped_recipes())}.")


def read_yaml(path: str) -> dict[str, Any]:
    """Read a mapping from the YAML file ``path`` names (see :func:`find_hparams`)."""
    path = find_hparams(path)
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise HParamsError(f"{path}: not valid YAML ({error}).") from error
    if not isinstance(data, dict):
        raise HParamsError(f"{path}: expected a mapping of hyper-parameters, got {type(data).__name__}.")
    return data


def _as_number(value: Any) -> Any:
    """Upstream YAMLs write floats like ``1e-4`` that YAML 1.1 reads as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def build(cls: type[T], config: dict[str, Any], source: str, alg_name: str) -> T:
    """Instantiate the dataclass ``cls`` from ``config``, rejecting unknown and missing keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(config) - set(fields))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, fields, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise HParamsError(
            f"{source}: unknown key(s) {', '.join(hints)} for {cls.__name__}. "
            f"Valid keys: {', '.join(sorted(fields))}."
        )
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    missing = [name for name in required if name not in config]
    if missing:
        raise HParamsError(f"{source}: missing required key(s) {', '.join(missing)} for {cls.__name__}.")
    if config.get("alg_name") != alg_name:
        raise HParamsError(
            f"{source}: alg_name is {config.get('alg_name')!r}, but {cls.__name__} needs alg_name: {alg_name}."
        )
    values = {key: _as_number(value) for key, value in config.items()}
    return cls(**values)


EMBEDDED_PREFIX = "embedded:"


def resolve_model_name(model_name: Any) -> Any:
    """``embedded:smollm2-135m`` becomes the converted SmolLM2 folder; other names pass through."""
    if not isinstance(model_name, str) or not model_name.startswith(EMBEDDED_PREFIX):
        return model_name
    name = model_name[len(EMBEDDED_PREFIX):]
    if name != "smollm2-135m":
        raise HParamsError(f"unknown embedded model {name!r}; the embedded model is 'embedded:smollm2-135m'.")
    from wise_plugin.embedded import smollm2_path

    return smollm2_path()


def load_hparams(cls: type[T], path: str, alg_name: str) -> T:
    """``cls`` from the YAML file ``path``: keys checked by :func:`build`, the embedded model name resolved."""
    hparams = build(cls, read_yaml(path), str(path), alg_name=alg_name)
    hparams.model_name = resolve_model_name(hparams.model_name)  # type: ignore[attr-defined]
    return hparams
