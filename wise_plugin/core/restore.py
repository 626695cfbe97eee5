"""What every plugin editor shares with the hosts: the restore handle and the undo-on-failure context."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

from torch import nn


class RestoreHandle(dict):
    """Restore handle for both hosts: the source-repo EasyEdit calls it, the package-index EasyEdit
    iterates ``items()``; either undoes the edits of the call that returned it.

    With ``lifelong: true`` both are skipped, so edits accumulate on either host whatever path
    the host takes (the source host calls the handle of WISE after every non-sequential edit, and
    iterates ``items()`` for LEMoE); :meth:`undo` rolls back in every case. ``state`` is the wrapped
    layer's snapshot before the call, or None when the call created the layer and ``remove`` takes
    it out again. ``loaded`` says the call attached the layer from a checkpoint (``load_path``)
    before ``state`` was taken: the host's restore keeps it, :meth:`rollback` removes it.
    """

    def __init__(self, model: nn.Module, layer: Any, state: Optional[dict[str, Any]], lifelong: bool,
                 remove: Callable[[nn.Module], Any], loaded: bool = False) -> None:
        super().__init__()
        self._model, self._layer, self._state, self._lifelong, self._remove = model, layer, state, lifelong, remove
        self._loaded = loaded

    def rollback(self) -> None:
        """Put the model back as it was before the call (a failed call: no edit, no loaded state)."""
        if self._loaded:
            self._remove(self._model)
        else:
            self.undo()

    def undo(self) -> None:
        """Undo the edits of the call that returned this handle (also with ``lifelong: true``)."""
        if self._state is None:
            self._remove(self._model)
        else:
            self._layer.restore(self._state)

    def __call__(self) -> None:
        if not self._lifelong:
            self.undo()

    def items(self):  # type: ignore[override]
        self()
        return super().items()


@contextlib.contextmanager
def editing(model: nn.Module, handle: RestoreHandle) -> Iterator[None]:
    """Edit in eval mode; on any error undo what the call did (never leave a half-applied edit),
    and always put the model back in the training mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    except BaseException:
        handle.rollback()
        raise
    finally:
        model.train(was_training)
