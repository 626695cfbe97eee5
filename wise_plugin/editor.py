"""``load_editor``: BaseEditor.from_hparams with the plugin's input checks in front of it."""

from __future__ import annotations

import os
from typing import Any, Union

from wise_plugin.hparams import HParamsError
from wise_plugin.host import base_editor


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/") and os.path.exists(name.split(os.sep)[0])


def load_editor(hparams: Union[str, Any]) -> Any:
    """A host ``BaseEditor`` for ``hparams`` (an hparams object or the path of a WISE YAML).

    Checks first what BaseEditor would otherwise report with a bare traceback: a local model
    folder that does not exist.
    """
    BaseEditor = base_editor()

    from wise_plugin.wise.config import WISEHyperParams

    if isinstance(hparams, (str, os.PathLike)):
        hparams = WISEHyperParams.from_hparams(os.fspath(hparams))
    name = hparams.model_name
    if isinstance(name, str) and _looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        raise HParamsError(
            f"model_name {name!r} is not an existing folder. Point model_name at a downloaded Hugging Face "
            "model folder, or use model_name: 'embedded:smollm2-135m' for the embedded model."
        )
    return BaseEditor.from_hparams(hparams)
