"""Make the package-index ``easyeditor`` (0.0.1.dev0) importable and usable on CPU.

That release pins transformers 4.30 and hard-codes ``cuda:{device}`` strings. Instead of patching
torch or transformers, an import hook rewrites the source of ``easyeditor`` modules only, as they
are loaded:

* ``f"cuda:{x}"`` and ``"cuda"`` device strings become ``_wise_device(x)``, which answers a CUDA
  device when one is there and the host asked for one, else ``"cpu"``;
* ``from transformers.modeling_utils import ...`` is served by a small module that adds the three
  helpers transformers 5 moved or dropped;
* when torchvision cannot be imported (there is no CPU build on the package index), the multimodal
  sub-packages become placeholder modules that raise a clear error when used, so the text editors
  import without them.

The source-repository EasyEdit needs none of this and is never hooked.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import types
from typing import Any, Sequence

_HOST = "easyeditor"

# Multimodal parts of the package-index host that need torchvision at import time.
_MULTIMODAL_MODULES = (
    "easyeditor.trainer.blip2_models",
    "easyeditor.trainer.MultimodalTrainer",
    "easyeditor.dataset.processor.blip_processors",
)

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

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        text = importlib.util.decode_source(self.get_data(path))
        return compile(rewrite_source(text), path, "exec", dont_inherit=True)

    def exec_module(self, module: types.ModuleType) -> None:
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


class PackageIndexHostFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that serves rewritten ``easyeditor`` modules from one install folder."""

    def __init__(self, stub_multimodal: bool) -> None:
        self.stub_multimodal = stub_multimodal

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _HOST and not fullname.startswith(_HOST + "."):
            return None
        if self.stub_multimodal and any(
            fullname == m or fullname.startswith(m + ".") for m in _MULTIMODAL_MODULES
        ):
            return importlib.machinery.ModuleSpec(fullname, _PlaceholderLoader(), is_package=True)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _RewritingLoader(fullname, spec.origin)
        return spec


def install_hook() -> PackageIndexHostFinder:
    """Put the finder first on ``sys.meta_path`` (once) and return it."""
    for finder in sys.meta_path:
        if isinstance(finder, PackageIndexHostFinder):
            return finder
    finder = PackageIndexHostFinder(stub_multimodal=not torchvision_usable())
    sys.meta_path.insert(0, finder)
    return finder
