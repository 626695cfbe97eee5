"""Module surgery and forward helpers both editors share: finding a module by its path, swapping
a wrapper in and out, capturing what blocks receive, the blocks above an edited layer."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import torch
from torch import nn

from wise_plugin.hparams import HParamsError

W = TypeVar("W", bound=nn.Module)

_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def module_path(inner_param: str) -> list[str]:
    """``'model.layers[27].mlp.down_proj.weight'`` -> ``['model', 'layers', '27', 'mlp', 'down_proj']``."""
    parts = re.sub(r"\[(\d+)\]", r".\1", inner_param.strip()).split(".")
    return parts[:-1] if parts[-1] == "weight" else parts


def _child(parent: nn.Module, name: str) -> Optional[nn.Module]:
    """``parent.name``, or ``parent[int(name)]`` for module lists; None when absent."""
    if name.isdigit() and isinstance(parent, (nn.ModuleList, nn.Sequential)):
        return parent[int(name)] if int(name) < len(parent) else None
    child = getattr(parent, name, None)
    return child if isinstance(child, nn.Module) else None


def locate(model: nn.Module, path: str, label: str, hint: str = "") -> tuple[nn.Module, str, nn.Module]:
    """(parent module, attribute name, module) at ``path``; when a part is missing, the error names
    it, what its parent holds instead, and ``hint``. ``label`` says which setting gave the path."""
    parts = module_path(path)
    parent: nn.Module = model
    module: Optional[nn.Module] = model
    for depth, name in enumerate(parts):
        module = _child(parent, name)
        if module is None:
            where = ".".join(parts[:depth]) or "the model"
            if isinstance(parent, (nn.ModuleList, nn.Sequential)):
                found = f"indices 0..{len(parent) - 1}"
            else:
                found = ", ".join(n for n, _ in parent.named_children()) or "nothing"
            raise HParamsError(
                f"{label} {path!r}: {'.'.join(parts[: depth + 1])!r} does not exist in "
                f"{type(model).__name__}; {where} has {found}.{hint}"
            )
        if depth < len(parts) - 1:
            parent = module
    return parent, parts[-1], module


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed activations are captured."""


@contextlib.contextmanager
def mlp_at(blocks: Sequence[nn.Module], where: tuple[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    """Run each block's ``mlp`` at the ``(rows, positions)`` in ``where`` only, zeros elsewhere.

    The MLP is most of a decoder block's work. Padding is never read by real tokens (attention
    masks it), and in the top block only the label positions reach the LM head, so the MLP may
    skip the rest. Blocks without an ``mlp`` module run whole.
    """
    shapes: list[Optional[torch.Size]] = []

    def pick(module: nn.Module, args: tuple) -> Optional[tuple]:
        if not args or args[0].dim() != 3:  # called in a way this does not know: leave it whole
            shapes.append(None)
            return None
        shapes.append(args[0].shape)
        return (args[0][where].unsqueeze(0),) + args[1:]

    def scatter(module: nn.Module, args: tuple, out: torch.Tensor) -> Optional[torch.Tensor]:
        full = shapes.pop()
        return None if full is None else out.new_zeros(full[:-1] + out.shape[-1:]).index_put(where, out[0])

    handles = []
    for block in blocks:
        mlp = getattr(block, "mlp", None)
        if isinstance(mlp, nn.Module):
            handles += [mlp.register_forward_pre_hook(pick), mlp.register_forward_hook(scatter)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


BlockCall = tuple[torch.Tensor, tuple, dict[str, Any]]  # hidden states, other arguments, keyword arguments


@torch.no_grad()
def block_calls(model: nn.Module, blocks: Sequence[nn.Module], inputs: dict[str, torch.Tensor],
                lower: Sequence[nn.Module] = ()) -> list[BlockCall]:
    """What each of ``blocks`` receives when ``model`` runs on ``inputs``; the forward stops before
    the last of them runs. ``lower`` blocks run their MLPs on real tokens only."""
    calls: list[BlockCall] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        calls.append((hidden.detach(), args[1:], kwargs))
        if module is blocks[-1]:
            raise StopForward

    handles = [block.register_forward_pre_hook(grab, with_kwargs=True) for block in blocks]
    mask = inputs.get("attention_mask")
    try:
        with mlp_at(lower, mask.nonzero(as_tuple=True)) if mask is not None else contextlib.nullcontext():
            model(**inputs, use_cache=False)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return calls


def input_device(model: nn.Module) -> torch.device:
    """Where token ids go: the embedding's device (the first one under ``device_map`` placement)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return embeddings.weight.device if embeddings is not None else next(model.parameters()).device


def cached_length(kwargs: dict[str, Any]) -> int:
    """Tokens already in the KV cache of a model call (0 for a new prompt). transformers up to 5.23
    passes the cache as ``past_key_values``; ``generate`` in 5.24 passes it as ``cache``."""
    cache = kwargs.get("past_key_values")
    if cache is None:
        cache = kwargs.get("cache")
    return cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0


def content_mask(model: nn.Module, input_ids: Optional[torch.Tensor],
                 attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The tokens a routing score averages over: real tokens, without the model's beginning-of-
    sequence token. Tokenizers that add it (SmolLM2's does) give it outlier activations whatever
    the text; edit rows are scored without it, so inference and the irrelevant rows leave it out too."""
    bos = getattr(getattr(model, "config", None), "bos_token_id", None)
    if input_ids is None or bos is None:
        return attention_mask
    content = torch.ones_like(input_ids, dtype=torch.bool)
    for token in (bos if isinstance(bos, (list, tuple)) else [bos]):
        content &= input_ids != token
    if attention_mask is None:
        return content.long()
    keep = attention_mask.to(content.device).bool().clone()
    width = min(content.shape[1], keep.shape[1])  # while a KV cache grows, the ids are the newest tokens
    keep[:, keep.shape[1] - width:] &= content[:, content.shape[1] - width:]
    return keep.long()


@dataclass
class UpperStack:
    """The decoder blocks from the edited one up, the final norm and the LM head, and the
    frozen blocks below the edited one."""

    blocks: list[nn.Module]
    norm: Optional[nn.Module]
    head: nn.Module
    lower: list[nn.Module] = field(default_factory=list)


def upper_stack(model: nn.Module, inner_param: str) -> Optional[UpperStack]:
    """Blocks at and above the edited one, or None when the model's layout is not recognised."""
    path = module_path(inner_param)
    container: Any = model
    for index, name in enumerate(path):
        if name.isdigit() and isinstance(container, nn.ModuleList):
            owner = _owner_of(model, path[: index - 1])
            norm = next((getattr(owner, n) for n in _FINAL_NORMS if isinstance(getattr(owner, n, None), nn.Module)), None)
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if norm is None or head is None:
                return None
            return UpperStack(blocks=list(container)[int(name):], norm=norm, head=head,
                              lower=list(container)[:int(name)])
        container = getattr(container, name, None)
        if container is None:
            return None
    return None


def _owner_of(model: nn.Module, path: list[str]) -> nn.Module:
    owner: Any = model
    for name in path:
        owner = getattr(owner, name)
    return owner


def find_wrapper(model: nn.Module, cls: type[W]) -> Optional[W]:
    """The first module of type ``cls`` (an editor's wrapper) inside ``model``, or None."""
    return next((module for module in model.modules() if isinstance(module, cls)), None)


def swap_in(model: nn.Module, parent: nn.Module, name: str, wrapper: nn.Module,
            pre_hook: Callable[[nn.Module, tuple, dict], None]) -> None:
    """Put ``wrapper`` at ``parent.name`` and register ``pre_hook`` (which sees every model call's
    arguments, e.g. the attention mask and the KV cache) on ``model``; the hook's handle is kept
    on the wrapper as ``hook_handle`` so :func:`swap_out` can remove it."""
    setattr(parent, name, wrapper)
    wrapper.hook_handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)


def swap_out(model: nn.Module, cls: type[nn.Module]) -> bool:
    """Put back the ``base`` module of the first ``cls`` wrapper and remove its hook; False if none."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, cls):
                if getattr(child, "hook_handle", None) is not None:
                    child.hook_handle.remove()
                setattr(parent, name, child.base)
                return True
    return False


def tensor_bytes(*tensors: Optional[torch.Tensor]) -> int:
    """Bytes held by the given tensors (None skipped): the memory a wrapper reports in ``footprint``."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
