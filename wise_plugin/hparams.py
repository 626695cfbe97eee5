"""Loading editor hyper-parameters from YAML with errors that say what to change."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class HParamsError(ValueError):
    """A hyper-parameter file or value is wrong; the message says which and how to fix it."""


def _type_name(kind: Any) -> str:
    """How an annotation reads in an error message: ``a number``, ``true or false``, ..."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, typing.List):
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(kind, str(kind))


def _fits(value: Any, kind: Any) -> bool:
    """``value`` has the annotated type, strictly: no string for a number or a bool, no bool for a
    number, no fraction where a count is meant (an integer is a valid float)."""
    if kind is Any:
        return True
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        return any(_fits(value, a) for a in args)
    if kind is type(None):
        return value is None
    if origin in (list, typing.List):
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(kind, type):
        return isinstance(value, kind)
    return True


@dataclasses.dataclass
class HyperParams:
    """Base of the plugin's hyper-parameter classes, with what both hosts' ``HyperParams`` offer
    (``to_dict``, ``from_json``), so the editors' options import without EasyEdit.

    :meth:`validate` is the one schema check: every field against its annotation (strict types),
    then the subclass's :meth:`problems` (ranges, choices, paths). It runs when the object is built
    (YAML, JSON, keyword arguments) and again when an editor starts, so values assigned as
    attributes in between or given as ``--set`` overrides are checked the same way.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        self.validate()

    def type_problems(self) -> list[str]:
        """One message per field whose value does not have the annotated type."""
        hints = typing.get_type_hints(type(self))
        problems = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if not _fits(value, hints.get(spec.name, Any)):
                problems.append(f"{spec.name} is {value!r} ({type(value).__name__}); it must be "
                                f"{_type_name(hints[spec.name])}" + (" (write it without quotes)"
                                                                      if isinstance(value, str) else ""))
        return problems

    def problems(self) -> list[str]:
        """Range, choice and path checks of the subclass (types are already right when it runs)."""
        return []

    def validate(self) -> None:
        """Raise an :class:`HParamsError` naming every wrong key, its value and the fix."""
        problems = self.type_problems()
        if not problems:
            problems = self.problems()
        if problems:
            raise HParamsError(f"invalid {getattr(self, 'alg_name', type(self).__name__)} hparams: "
                               + "; ".join(problems) + ".")

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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that ``1e-4`` and ``5E+3`` are numbers (YAML 1.2 reads
    them so; PyYAML wants a dot), as in upstream EasyEdit files. A quoted value stays a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str) -> dict[str, Any]:
    """Read a mapping from the YAML file ``path`` names (see :func:`find_hparams`)."""
    path = find_hparams(path)
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.load(handle, Loader=_Loader)
        except yaml.YAMLError as error:
            raise HParamsError(f"{path}: not valid YAML ({error}).") from error
    if not isinstance(data, dict):
        raise HParamsError(f"{path}: expected a mapping of hyper-parameters, got {type(data).__name__}.")
    return data


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
    return cls(**config)


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


def check_model_name(model_name: Any) -> None:
    """Reject a ``model_name`` that is clearly a local folder (``./``, ``/``, ``~`` or a relative path
    whose first part exists) but does not exist, before a host tries to load it."""
    if not isinstance(model_name, str):
        return
    first = model_name.split(os.sep)[0]
    local = model_name.startswith((".", "/", "~")) or (os.sep in model_name.strip("/") and os.path.exists(first))
    if local and not os.path.isdir(os.path.expanduser(model_name)):
        raise HParamsError(
            f"model_name {model_name!r} is not an existing folder. Point model_name at a downloaded Hugging Face "
            "model folder, or use model_name: 'embedded:smollm2-135m' for the embedded model."
        )


def load_hparams(cls: type[T], path: str, alg_name: str) -> T:
    """``cls`` from the YAML file ``path``: keys checked by :func:`build`, the embedded model name resolved."""
    hparams = build(cls, read_yaml(path), str(path), alg_name=alg_name)
    hparams.model_name = resolve_model_name(hparams.model_name)  # type: ignore[attr-defined]
    return hparams


_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*|\[\d+\]|\.\d+)*$")
# Module names that are never an FFN output projection: attention parts, and the FFN's input side.
_NOT_FFN_OUTPUT = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn", "up_proj",
                   "gate_proj", "gate_up_proj", "c_fc", "fc1", "fc_in", "dense_h_to_4h", "wi", "wi_0", "wi_1", "w1",
                   "w3", "lm_head", "embed_tokens", "wte", "wpe"}
_ATTENTION = re.compile(r"(^|[._])(self_attn|attn|attention|self_attention)([._\[]|$)")
# Linear layers inside an FFN block: naming one of them instead of the block is the usual LEMoE slip.
_FFN_LINEARS = {"down_proj", "up_proj", "gate_proj", "gate_up_proj", "c_proj", "c_fc", "fc1", "fc2", "fc_in", "fc_out",
                "dense_4h_to_h", "dense_h_to_4h", "wi", "wo", "w1", "w2", "w3"}


def _module_names(path: str) -> list[str]:
    return [part for part in re.split(r"[.\[\]]+", path) if part]


def ffn_output_problem(path: str) -> str:
    """Why ``path`` (``inner_params``) cannot be a WISE target, or ``""``: it must be the weight of
    an FFN output projection (``model.layers[25].mlp.down_proj.weight``), never an attention
    projection or the FFN's input side (the model's structure is checked again when it attaches)."""
    path = path.strip()
    example = "e.g. 'model.layers[25].mlp.down_proj.weight'"
    if not path.endswith(".weight") or not _MODULE_PATH.match(path[:-len(".weight")]):
        return f"inner_params {path!r} is not a weight path like {example}"
    names = _module_names(path[:-len(".weight")])
    if names[-1] in _NOT_FFN_OUTPUT or _ATTENTION.search(path):
        return (f"inner_params {path!r} names {names[-1]!r}, which is not an FFN output projection; WISE keeps its "
                f"side memory in the FFN's output projection, {example}")
    return ""


def ffn_block_problem(path: str) -> str:
    """Why ``path`` (LEMoE's ``layer``) cannot be extended, or ``""``: it must name a whole FFN block
    (``model.layers[17].mlp``), not a parameter or one of the block's Linear layers."""
    example = "e.g. 'model.layers[17].mlp'"
    if path.endswith((".weight", ".bias")):
        return f"layer {path!r} names a parameter; LEMoE extends a whole FFN module, {example}"
    if not _MODULE_PATH.match(path):
        return f"layer {path!r} is not a module path like {example}"
    names = _module_names(path)
    if names[-1] in _FFN_LINEARS or names[-1] in _NOT_FFN_OUTPUT or _ATTENTION.search(path):
        return (f"layer {path!r} names {names[-1]!r}, a single projection; LEMoE adds experts beside a whole FFN "
                f"block: name the block that holds it, {example}")
    return ""


def common_problems(hparams: Any) -> list[str]:
    """Checks both editors share: the request length limit and the irrelevant-text pool file."""
    problems = []
    limit = getattr(hparams, "max_request_tokens", None)
    if limit is not None and limit < 1:
        problems.append(f"max_request_tokens must be >= 1 (tokens of prompt + target) or null, got {limit}")
    pool = getattr(hparams, "loc_pool", None)
    if pool not in (None, "builtin") and not os.path.isfile(os.path.expanduser(str(pool))):
        problems.append(f"loc_pool file not found: {pool!r}; use 'builtin' or the path of a JSON list of texts")
    if getattr(hparams, "seed", 0) < 0:
        problems.append(f"seed must be >= 0, got {hparams.seed}")
    return problems
