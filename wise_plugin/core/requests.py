"""What an edit request must be, checked before anything changes: the one home of request validation.

Both editors' entry points call :func:`check_call`; the host guard (:mod:`wise_plugin.host.guard`)
calls :func:`check_edit_arguments` on ``BaseEditor.edit``'s arguments before EasyEdit's own code
runs, so a bad request gives a message that names the request, the value and the fix instead of
an empty AssertionError or an IndexError deep in the host's scoring.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence


DEFAULT_MAX_REQUEST_TOKENS = 1024  # prompt + target; the longest request in ../shared/data is about 300 tokens


class EditRequestError(ValueError):
    """An edit request is unusable; the message says which one, what is wrong and how to fix it."""


def _where(index: Optional[int]) -> str:
    return "edit request" if index is None else f"edit request {index}"


def check_request(request: Any, index: Optional[int] = None) -> None:
    """Reject a request without a usable prompt or target (a non-empty string each)."""
    if not isinstance(request, dict):
        raise EditRequestError(f"{_where(index)} is a {type(request).__name__}; it must be a dict with 'prompt' and "
                               "'target_new' strings.")
    for key in ("prompt", "target_new"):
        value = request.get(key)
        if not isinstance(value, str) or not value.strip():
            raise EditRequestError(f"{_where(index)} needs a non-empty string {key!r}, got {value!r}.")


def context_length(model: Any) -> Optional[int]:
    """The longest input the model's positions allow, when its config says so."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(tok: Any, model: Any, requests: Sequence[dict[str, Any]], limit: Optional[int]) -> None:
    """Reject a request whose prompt plus target has more tokens than ``limit`` (``max_request_tokens``)
    or than the model's context: the edit rows add prefixes to it, and an overlong row ends in an
    IndexError in the position embeddings or in minutes of work on rows that cannot fit."""
    context = context_length(model)
    bounds = [b for b in (limit, context) if b is not None]
    if tok is None or not bounds:
        return
    bound = min(bounds)
    for index, request in enumerate(requests):
        n = len(tok(f"{request['prompt']} {request['target_new']}")["input_ids"])
        if n > bound:
            which = (f"max_request_tokens is {limit}" if limit == bound else f"the model's context is {context} tokens")
            raise EditRequestError(
                f"{_where(index if len(requests) > 1 else None)} is {n} tokens (prompt + target_new, starting "
                f"{request['prompt'][:40]!r}); {which}. Shorten the prompt or target"
                + (", or raise max_request_tokens in the hparams." if limit == bound else "."))


def check_call(requests: Any, copy: bool, editor: str, tok: Any = None, model: Any = None,
               limit: Optional[int] = None) -> None:
    """What every editor's host entry point checks before it changes anything: in-place editing
    (``copy=False``), a non-empty list of requests, each with a usable prompt and target that fits."""
    if copy:
        raise EditRequestError(f"{editor} edits the model in place; copy=True is not supported.")
    if not isinstance(requests, (list, tuple)) or not requests:
        raise EditRequestError(f"no edit requests given (got {requests!r}); pass a non-empty list of request dicts.")
    for index, request in enumerate(requests):
        check_request(request, index if len(requests) > 1 else None)
    check_lengths(tok, model, requests, limit)


def _as_list(name: str, value: Any, n: int, required: bool) -> None:
    if value is None:
        if required:
            raise EditRequestError(f"{name} is missing; pass a string, or a list with one string per prompt.")
        return
    if isinstance(value, str):
        if n != 1:
            raise EditRequestError(f"{name} is one string but there are {n} prompts; pass a list of {n} strings.")
        return
    if not isinstance(value, (list, tuple)):
        raise EditRequestError(f"{name} is a {type(value).__name__}; pass a string or a list of strings.")
    if len(value) != n:
        raise EditRequestError(f"{name} has {len(value)} entries but there are {n} prompts; give one per prompt.")


def check_edit_arguments(prompts: Any, target_new: Any, tok: Any = None, model: Any = None,
                         limit: Optional[int] = None, **lists: Any) -> None:
    """``BaseEditor.edit``'s arguments as the host would read them: prompts and targets as strings or
    equally long non-empty lists, optional per-prompt lists (``ground_truth``, ``rephrase_prompts``,
    ``subject``) of the same length, and every prompt + target within the token limit."""
    if isinstance(prompts, str):
        prompt_list = [prompts]
    elif isinstance(prompts, (list, tuple)):
        prompt_list = list(prompts)
    else:
        raise EditRequestError(f"prompts is {prompts!r}; pass a string or a non-empty list of strings.")
    if not prompt_list:
        raise EditRequestError("prompts is an empty list; pass at least one prompt to edit.")
    _as_list("target_new", target_new, len(prompt_list), required=True)
    targets = [target_new] if isinstance(target_new, str) else list(target_new)
    for name, value in lists.items():
        if name == "rephrase_prompts" and isinstance(value, str) and len(prompt_list) > 1:
            continue  # the host reads one rephrase string for a list as is (no per-prompt check)
        _as_list(name, value, len(prompt_list), required=False)
    requests = [{"prompt": p, "target_new": t} for p, t in zip(prompt_list, targets)]
    check_call(requests, False, "", tok, model, limit)
