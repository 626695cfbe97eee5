"""Access to the host EasyEdit: which flavour is installed, importing it, registering editors.

Two EasyEdits exist (see docs): the package-index ``easyeditor`` 0.0.1.dev0, which needs the
import-time compatibility layer in :mod:`wise_plugin.host.compat`, and the source-repository
EasyEdit (a clone on ``PYTHONPATH``), which is used unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Callable

logger = logging.getLogger("wise_plugin")

INSTALL_HINT = (
    "Install the package-index EasyEdit with `pip install --no-deps easyeditor==0.0.1.dev0` plus "
    "its import-time needs (`pip install -e '.[host]'` in this repository, or `make install`), "
    "or put a clone of https://github.com/zjunlp/EasyEdit on PYTHONPATH."
)


class HostImportError(ImportError):
    """The host EasyEdit is missing or cannot be imported."""


def host_flavour() -> str:
    """``"source"`` for a source-repository EasyEdit, ``"pypi"`` for the package-index release."""
    spec = importlib.util.find_spec("easyeditor")
    if spec is None or not spec.submodule_search_locations:
        raise HostImportError(f"EasyEdit (`easyeditor`) is not installed. {INSTALL_HINT}")
    root = list(spec.submodule_search_locations)[0]
    return "source" if os.path.isdir(os.path.join(root, "models", "wise")) else "pypi"


def import_host() -> ModuleType:
    """Import ``easyeditor``, installing the compatibility hook first for the package-index host."""
    if "easyeditor" in sys.modules and hasattr(sys.modules["easyeditor"], "BaseEditor"):
        return sys.modules["easyeditor"]
    flavour = host_flavour()
    if flavour == "pypi":
        from wise_plugin.host.compat import install_hook

        install_hook()
    try:
        return importlib.import_module("easyeditor")
    except Exception as error:  # any import-time failure of the host is reported the same way
        raise HostImportError(
            f"Importing EasyEdit ({flavour} flavour) failed: {type(error).__name__}: {error}. "
            f"{INSTALL_HINT}"
        ) from error


def alg_dict() -> dict[str, Callable]:
    """The host's ``ALG_DICT``: the very dict ``BaseEditor.__init__`` reads."""
    import_host()
    from easyeditor.util.alg_dict import ALG_DICT

    return ALG_DICT


def register(name: str, apply_fn: Callable, upstream_alias: str | None = None) -> str:
    """Put ``apply_fn`` under ``name``; an existing different entry moves to ``upstream_alias``.

    Returns a one-line description of what was registered, for logging.
    """
    table = alg_dict()
    existing = table.get(name)
    note = f"{name} -> {apply_fn.__module__}.{apply_fn.__name__}"
    if existing is not None and existing is not apply_fn and upstream_alias:
        table.setdefault(upstream_alias, existing)
        note += f"; the host's own {name} stays reachable as alg_name '{upstream_alias}'"
    table[name] = apply_fn
    return note
