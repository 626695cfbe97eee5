"""All-or-nothing ``BaseEditor`` calls for the plugin's editors, on both hosts.

Both EasyEdits call an editor's apply function once per request, so a failure at request k of a
list leaves requests 1..k-1 in the model, and bad arguments reach the host's own code first (an
empty AssertionError, an UnboundLocalError for ``prompts=[]``, an IndexError for an overlong
prompt). :func:`install_guard` wraps ``BaseEditor.__init__``, ``edit``, ``edit_requests`` and
``generate_edit`` in the loaded host, for the plugin's editors only (``alg_name`` WISE or LEMoE
mapped to the plugin's apply function; every other editor runs the host's code untouched):

- before the host's code runs: the hyper-parameters (:meth:`HyperParams.validate`), the model
  name, and every request (:mod:`wise_plugin.core.requests`);
- during the call: the plugin layer's state before it is kept; any exception undoes the whole
  call (a layer the call attached is taken out again) and is re-raised;
- ``save_path``: written once, after the whole call succeeded, with the edits the model then holds
  (the apply functions' per-call saves are held back during a guarded call).

The host's files are not changed; the wrappers live on the imported class.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable, Iterator, Optional

from wise_plugin.core.requests import EditRequestError, check_call, check_edit_arguments
from wise_plugin.hparams import HParamsError, check_model_name

logger = logging.getLogger("wise_plugin")
MARK = "__wise_plugin_guard__"


def plugin_kind(editor: Any) -> Optional[str]:
    """``"WISE"`` or ``"LEMoE"`` when ``editor`` runs one of the plugin's editors, else None."""
    from wise_plugin.lemoe.main import apply_lemoe_to_model
    from wise_plugin.wise.main import apply_wise_to_model

    apply_fn = getattr(editor, "apply_algo", None)
    return {apply_wise_to_model: "WISE", apply_lemoe_to_model: "LEMoE"}.get(apply_fn)


def editor_parts(kind: str) -> tuple[Callable, Callable, Callable, Callable]:
    """(find_layer, detach, save(model, hparams, path), load(model, hparams, path)) of one plugin editor."""
    if kind == "WISE":
        from wise_plugin.wise import checkpoint, model

        return (model.find_layer, model.detach, lambda m, h, p: checkpoint.save_checkpoint(m, p, h.inner_params[0]),
                lambda m, h, p: checkpoint.load_checkpoint(m, p, h.inner_params[0]))
    from wise_plugin.lemoe import checkpoint, model

    return (model.find_layer, model.detach, lambda m, h, p: checkpoint.save_checkpoint(m, p, h),
            lambda m, h, p: checkpoint.load_checkpoint(m, p, h))


@contextlib.contextmanager
def transaction(editor: Any, kind: str) -> Iterator[None]:
    """Undo everything the enclosed host call did to the plugin layer if it raises; save once at the end."""
    find_layer, detach, save, _ = editor_parts(kind)
    model, hparams = editor.model, editor.hparams
    layer = find_layer(model)
    state = layer.snapshot() if layer is not None else None
    save_path = getattr(hparams, "save_path", None)
    hparams.save_path = None  # held back until the whole call has succeeded
    try:
        yield
        if save_path:
            if find_layer(model) is not None:
                save(model, hparams, save_path)
                logger.info("%s state saved to %s", kind, save_path)
            else:
                logger.warning("save_path %s: nothing saved, the host undid this call's edits after scoring them "
                               "(lifelong: false); set lifelong: true to keep and save edits", save_path)
    except BaseException:
        if layer is None:
            detach(model)
        elif find_layer(model) is layer:
            layer.restore(state)
        logger.info("%s call failed; the model is back to its state before the call", kind)
        raise
    finally:
        hparams.save_path = save_path


def _guarded(method: Callable, check: Callable[..., None]) -> Callable:
    """``method`` with ``check(editor, *args, **kwargs)`` before it and a transaction around it, for
    the plugin's editors; an inner guarded method called by an outer one runs unguarded."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        kind = plugin_kind(self)
        if kind is None or getattr(self, MARK, False):
            return method(self, *args, **kwargs)
        check(self, *args, **kwargs)
        setattr(self, MARK, True)
        try:
            with transaction(self, kind):
                return method(self, *args, **kwargs)
        finally:
            setattr(self, MARK, False)

    setattr(wrapper, MARK, True)
    return wrapper


def _validate(editor: Any) -> None:
    validate = getattr(editor.hparams, "validate", None)
    if validate is not None:
        validate()


def _check_edit(editor: Any, prompts: Any = None, target_new: Any = None, *args: Any, **kwargs: Any) -> None:
    _validate(editor)
    if "requests" in kwargs:  # the source host's edit takes prepared requests this way
        _check_requests(editor, kwargs["requests"])
        return
    lists = {name: kwargs.get(name) for name in ("ground_truth", "subject") if kwargs.get(name) is not None}
    check_edit_arguments(prompts, target_new, editor.tok, editor.model,
                         getattr(editor.hparams, "max_request_tokens", None), **lists)


def _check_requests(editor: Any, requests: Any = None, *args: Any, **kwargs: Any) -> None:
    _validate(editor)
    check_call(requests, False, editor.alg_name, editor.tok, editor.model,
               getattr(editor.hparams, "max_request_tokens", None))


def _guarded_init(init: Callable) -> Callable:
    """``BaseEditor.__init__`` that checks the plugin's hparams and model name first, and turns the
    host's bare NotImplementedError for a model name it cannot load into a message."""
    @functools.wraps(init)
    def wrapper(self: Any, hparams: Any, *args: Any, **kwargs: Any) -> None:
        ours = getattr(hparams, "alg_name", None) in ("WISE", "LEMoE") and \
            type(hparams).__module__.startswith("wise_plugin.")
        if not ours:
            return init(self, hparams, *args, **kwargs)
        hparams.validate()
        check_model_name(hparams.model_name)
        try:
            init(self, hparams, *args, **kwargs)
        except NotImplementedError as error:
            raise HParamsError(
                f"EasyEdit cannot load model_name {hparams.model_name!r}: it picks the model class from words in "
                "the name (llama, gpt, qwen, mistral, t5, ...) and knows none in this one. Pass a folder whose "
                "path names the family, or a (model, tokenizer) pair as model_name."
            ) from error

    setattr(wrapper, MARK, True)
    return wrapper


def install_guard(base_editor: type) -> None:
    """Wrap the loaded host's ``BaseEditor`` (idempotent); see the module docstring."""
    if getattr(base_editor.__init__, MARK, False):
        return
    base_editor.__init__ = _guarded_init(base_editor.__init__)
    for name, check in (("edit", _check_edit), ("generate_edit", _check_edit), ("edit_requests", _check_requests)):
        method = getattr(base_editor, name, None)
        if method is not None and not getattr(method, MARK, False):
            setattr(base_editor, name, _guarded(method, check))


__all__ = ["EditRequestError", "editor_parts", "install_guard", "plugin_kind", "transaction"]
