"""Make both EasyEdits importable here: an import hook confined to the ``easyeditor`` namespace.

The package-index ``easyeditor`` (0.0.1.dev0) pins transformers 4.30 and hard-codes
``cuda:{device}`` strings. Instead of patching torch or transformers, the hook rewrites the source
of ``easyeditor`` modules only, as they are loaded:

* ``f"cuda:{x}"`` and ``"cuda"`` device strings become ``_wise_device(x)``, which answers a CUDA
  device when one is there and the host asked for one, else ``"cpu"``;
* ``from transformers.modeling_utils import ...`` is served by a small module that adds the three
  helpers transformers 5 moved or dropped;
* when torchvision cannot be imported (there is no CPU build on the package index), the multimodal
  sub-packages become placeholder modules that raise a clear error when used, so the text editors
  import without them.

The source-repository EasyEdit is used unchanged: its source is never rewritten. Its multimodal
parts that need torchvision or timm (``trainer.blip2_models`` and two image processors)
become the same placeholders when torchvision cannot be imported; nothing outside ``easyeditor``
is ever replaced, so other libraries (transformers' own torchvision checks) see the real packages.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import types
from typing import Any, Callable, Optional, Sequence

_HOST = "easyeditor"

# Multimodal parts of each host that need torchvision (and timm) at import time.
MULTIMODAL_MODULES = {
    "pypi": ("easyeditor.trainer.blip2_models", "easyeditor.trainer.MultimodalTrainer",
             "easyeditor.dataset.processor.blip_processors"),
    "source": ("easyeditor.trainer.blip2_models", "easyeditor.dataset.processor.blip_processors",
               "easyeditor.dataset.processor.qwen2vl_processors"),
}

_FSTRING_DEVICE = re.compile(r"""f(['"])cuda:\{([^{}]+)\}\1""")
_PLAIN_DEVICE = re.compile(r"""\.to\((['"])cuda\1\)""")
_MODELING_UTILS_IMPORT = "from transformers.modeling_utils import"


def _wise_device(index: Any = None) -> str:
    """Device string the host asked for, falling back to CPU where CUDA is absent or not asked."""
    import torch

    text = "" if index is None else str(index).strip()
    if text.lower().startswith("cuda"):
        text = text.partition(":")[2]
    if text.lower() == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{text}" if text else "cuda"


def rewrite_source(source: str) -> str:
    """Return ``source`` with host device strings and moved transformers imports redirected."""
    source = _FSTRING_DEVICE.sub(lambda m: f"_wise_device({m.group(2)})", source)
    source = _PLAIN_DEVICE.sub(".to(_wise_device())", source)
    return source.replace(_MODELING_UTILS_IMPORT, "from wise_plugin.host.modeling_utils import")


def torchvision_usable() -> bool:
    """True when torchvision imports; a CUDA-only wheel next to a CPU torch fails at import."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # a broken CUDA wheel raises RuntimeError, not ImportError
        return False
    return True


class _RewritingLoader(importlib.machinery.SourceFileLoader):
    """Compiles the rewritten source; the host's own ``__pycache__`` (unrewritten) is bypassed."""

    rewrite = True

    def get_code(self, fullname: str) -> types.CodeType:
        if not self.rewrite:
            return super().get_code(fullname)
        path = self.get_filename(fullname)
        text = importlib.util.decode_source(self.get_data(path))
        return compile(rewrite_source(text), path, "exec", dont_inherit=True)

    def exec_module(self, module: types.ModuleType) -> None:
        if self.rewrite:
            module.__dict__["_wise_device"] = _wise_device
        super().exec_module(module)


class _UnavailableModule(types.ModuleType):
    """Stands in for a multimodal host module whose imports cannot be satisfied on this machine."""

    __all__: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        message = (
            f"{self.__name__}.{name} is part of EasyEdit's multimodal editing, which needs "
            "torchvision; torchvision has no CPU build on the package index. Install a "
            "torchvision that matches your torch to use it."
        )

        class _Missing:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise ImportError(message)

        _Missing.__name__ = name
        return _Missing


class _PlaceholderLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _UnavailableModule(spec.name)
        module.__path__ = []  # a package, so sub-module imports resolve to placeholders too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _PackageLoader(_RewritingLoader):
    """Loads the ``easyeditor`` package itself (rewritten or not), then calls ``on_load``."""

    on_load: Optional[Callable[[], None]] = None

    def exec_module(self, module: types.ModuleType) -> None:
        from wise_plugin.host import host_import_error

        try:
            super().exec_module(module)
        except Exception as error:  # the host's own import failed: say which flavour and how to fix it
            raise host_import_error("source" if not self.rewrite else "pypi", error) from error
        if self.on_load is not None:
            self.on_load()


class HostFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder for ``easyeditor`` modules: placeholders for ``placeholders`` (and their
    sub-modules), with ``rewrite`` the package-index host's source rewritten for this machine, and
    ``on_load`` called once the ``easyeditor`` package has executed."""

    def __init__(self, placeholders: Sequence[str], rewrite: bool,
                 on_load: Optional[Callable[[], None]] = None) -> None:
        self.placeholders = tuple(placeholders)
        self.rewrite = rewrite
        self.on_load = on_load

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _HOST and not fullname.startswith(_HOST + "."):
            return None
        if any(fullname == m or fullname.startswith(m + ".") for m in self.placeholders):
            return importlib.machinery.ModuleSpec(fullname, _PlaceholderLoader(), is_package=True)
        if fullname != _HOST and not self.rewrite:
            return None  # the regular finders load the module unchanged
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        if fullname == _HOST:
            loader = _PackageLoader(fullname, spec.origin)
            loader.rewrite, loader.on_load = self.rewrite, self.on_load
            spec.loader = loader
        else:
            spec.loader = _RewritingLoader(fullname, spec.origin)
        return spec


def install_hook(flavour: str, on_load: Optional[Callable[[], None]] = None) -> HostFinder:
    """Put the finder for host ``flavour`` (``"pypi"`` or ``"source"``) first on ``sys.meta_path``
    (once) and return it; ``on_load`` runs after the ``easyeditor`` package has loaded."""
    for finder in sys.meta_path:
        if isinstance(finder, HostFinder):
            return finder
    placeholders = () if torchvision_usable() else MULTIMODAL_MODULES[flavour]
    finder = HostFinder(placeholders, rewrite=flavour == "pypi", on_load=on_load)
    sys.meta_path.insert(0, finder)
    return finder


def remove_hook() -> None:
    """Take the finder off ``sys.meta_path`` (before ``easyeditor`` is imported, to change hosts)."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, HostFinder)]
