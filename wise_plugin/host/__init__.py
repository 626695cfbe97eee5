"""Access to the host EasyEdit: where it is, which flavour, importing it, registering the editors.

Two EasyEdits exist (see README): the package-index ``easyeditor`` 0.0.1.dev0, which needs the
import-time compatibility layer in :mod:`wise_plugin.host.compat`, and the source-repository
EasyEdit (a clone on ``PYTHONPATH``, or named by ``$WISE_PLUGIN_EASYEDIT``), used unchanged.

This is the only package of ``wise_plugin`` that imports ``easyeditor``. Importing ``wise_plugin``
does not import the host: :func:`enable_host` only installs an import hook, and the plugin's
editors are put into the host's ``ALG_DICT`` the moment ``easyeditor`` finishes loading (or at
once when it is already loaded). So ``import wise_plugin`` then ``from easyeditor import
BaseEditor`` finds WISE and LEMoE registered, and the torch-only parts of the plugin import
without EasyEdit.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any, Callable

logger = logging.getLogger("wise_plugin")

ENV_EASYEDIT = "WISE_PLUGIN_EASYEDIT"
INSTALL_HINT = (
    "Install the package-index EasyEdit with `pip install --no-deps easyeditor==0.0.1.dev0` plus "
    "its import-time needs (`pip install -e '.[host]'` in this repository, or `make install`), "
    f"or point ${ENV_EASYEDIT} (or `wise-plugin <command> --easyedit PATH`) at a clone of "
    "https://github.com/zjunlp/EasyEdit, or put that clone on PYTHONPATH."
)
SOURCE_HINT = (
    "The source-repository EasyEdit needs the packages of its requirements.txt (transformers 5.5.4 "
    "among them); in this repository `make install-source` builds such an environment in .venv-source "
    "(see the README, 'Set-up')."
)
UPSTREAM_ALIASES = {"WISE": "WISE-upstream"}  # host editors our editors replace stay reachable here


class HostImportError(ImportError):
    """The host EasyEdit is missing or cannot be imported."""


def use_source_host(path: str) -> str:
    """Put the source-repository EasyEdit at ``path`` (the folder holding ``easyeditor/``) first on
    ``sys.path``; returns the absolute folder. Must run before ``easyeditor`` is imported."""
    root = os.path.abspath(os.path.expanduser(path))
    if os.path.basename(root) == "easyeditor" and os.path.isfile(os.path.join(root, "__init__.py")):
        root = os.path.dirname(root)  # the package folder itself was named
    if not os.path.isfile(os.path.join(root, "easyeditor", "__init__.py")):
        raise HostImportError(f"{path!r} holds no EasyEdit: expected {os.path.join(root, 'easyeditor', '__init__.py')}. "
                              "Name the root of an EasyEdit clone (the folder that contains `easyeditor/`).")
    loaded = sys.modules.get("easyeditor")
    if loaded is not None:
        where = os.path.dirname(os.path.dirname(os.path.abspath(getattr(loaded, "__file__", "") or "")))
        if where != root:
            raise HostImportError(f"EasyEdit was already imported from {where}; set the EasyEdit path before "
                                  "anything imports easyeditor (e.g. as the first thing in the process).")
        return root
    if root not in sys.path:
        sys.path.insert(0, root)
    importlib.invalidate_caches()
    return root


def select_host(path: str) -> str:
    """Use the source-repository EasyEdit at ``path`` from now on (before ``easyeditor`` is imported):
    its folder goes first on ``sys.path`` and the import hook is set up again for it."""
    root = use_source_host(path)
    if "easyeditor" not in sys.modules:
        from wise_plugin.host.compat import remove_hook

        remove_hook()
        enable_host()
    return root


def host_root() -> str:
    """The folder of the ``easyeditor`` package that imports here."""
    spec = importlib.util.find_spec("easyeditor")
    if spec is None or not spec.submodule_search_locations:
        raise HostImportError(f"EasyEdit (`easyeditor`) is not installed. {INSTALL_HINT}")
    return list(spec.submodule_search_locations)[0]


def host_flavour() -> str:
    """``"source"`` for a source-repository EasyEdit, ``"pypi"`` for the package-index release."""
    return "source" if os.path.isdir(os.path.join(host_root(), "models", "wise")) else "pypi"


def enable_host() -> None:
    """Prepare the host without importing it: honour ``$WISE_PLUGIN_EASYEDIT``, install the import
    hook, and register the plugin's editors once ``easyeditor`` is loaded. No host: nothing to do
    (the editors still work on a bare model; :func:`import_host` reports what is missing)."""
    if os.environ.get(ENV_EASYEDIT):
        use_source_host(os.environ[ENV_EASYEDIT])
    if "easyeditor" in sys.modules:
        register_editors()
        return
    try:
        flavour = host_flavour()
    except HostImportError:
        return
    from wise_plugin.host.compat import install_hook

    install_hook(flavour, on_load=register_editors)


def import_host() -> ModuleType:
    """Import ``easyeditor`` (through the hook) with the plugin's editors registered."""
    module = sys.modules.get("easyeditor")
    if module is None or not hasattr(module, "BaseEditor"):
        enable_host()
        flavour = host_flavour()
        try:
            module = importlib.import_module("easyeditor")
        except HostImportError:
            raise
        except Exception as error:  # any import-time failure of the host is reported the same way
            raise host_import_error(flavour, error) from error
    register_editors()
    return module


def host_import_error(flavour: str, error: BaseException) -> HostImportError:
    """The error for a host whose import failed: what failed, and how to install that flavour."""
    return HostImportError(f"Importing EasyEdit ({flavour} flavour) failed: {type(error).__name__}: {error}. "
                           f"{SOURCE_HINT if flavour == 'source' else INSTALL_HINT}")


def host_attr(name: str) -> Any:
    """A public name of the host package (``BaseEditor``, ``compute_edit_quality``, ``ZsreDataset``,
    ``FTHyperParams``, ...): the one way the rest of the plugin reaches EasyEdit's code."""
    module = import_host()
    try:
        return getattr(module, name)
    except AttributeError as error:
        raise HostImportError(f"this EasyEdit ({host_flavour()} flavour) has no {name!r}.") from error


def base_editor() -> Any:
    """The host's ``BaseEditor`` class."""
    return host_attr("BaseEditor")


def compute_edit_quality(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """The host's ``compute_edit_quality`` (teacher-forced Rel/Gen and locality tokens)."""
    return host_attr("compute_edit_quality")(*args, **kwargs)


def alg_dict() -> dict[str, Callable]:
    """The host's ``ALG_DICT``: the very dict ``BaseEditor.__init__`` reads."""
    import_host()
    from easyeditor.util.alg_dict import ALG_DICT

    return ALG_DICT


def register(table: dict[str, Callable], name: str, apply_fn: Callable) -> str:
    """Put ``apply_fn`` under ``name`` in ``table``; an existing different entry moves to
    ``UPSTREAM_ALIASES[name]``. Returns a one-line description, for logging."""
    existing = table.get(name)
    note = f"{name} -> {apply_fn.__module__}.{apply_fn.__name__}"
    alias = UPSTREAM_ALIASES.get(name)
    if existing is not None and existing is not apply_fn and alias:
        table.setdefault(alias, existing)
        note += f"; the host's own {name} stays reachable as alg_name '{alias}'"
    table[name] = apply_fn
    return note


def register_editors() -> None:
    """Register WISE and LEMoE in the loaded host's ``ALG_DICT`` and guard its ``BaseEditor``
    (:mod:`wise_plugin.host.guard`); idempotent."""
    from easyeditor.util.alg_dict import ALG_DICT

    from wise_plugin.host.guard import install_guard
    from wise_plugin.lemoe.main import apply_lemoe_to_model
    from wise_plugin.wise.main import apply_wise_to_model

    editor_class = getattr(sys.modules["easyeditor"], "BaseEditor", None)
    if editor_class is not None:
        install_guard(editor_class)  # all-or-nothing calls and checked requests for the plugin's editors
    if ALG_DICT.get("WISE") is apply_wise_to_model and ALG_DICT.get("LEMoE") is apply_lemoe_to_model:
        return
    notes = [register(ALG_DICT, "WISE", apply_wise_to_model), register(ALG_DICT, "LEMoE", apply_lemoe_to_model)]
    logger.info("wise-plugin registered in EasyEdit (%s flavour): %s", host_flavour(), " | ".join(notes))
