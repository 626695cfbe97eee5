"""``load_editor``: BaseEditor.from_hparams with the plugin's input checks in front of it."""

from __future__ import annotations

import os
from typing import Any, Union

from wise_plugin.hparams import check_model_name
from wise_plugin.host import base_editor


def load_editor(hparams: Union[str, Any]) -> Any:
    """A host ``BaseEditor`` for ``hparams`` (an hparams object or the path of a WISE YAML).

    Checks first what BaseEditor would otherwise report with a bare traceback: a local model
    folder that does not exist.
    """
    BaseEditor = base_editor()

    from wise_plugin.wise.config import WISEHyperParams

    if isinstance(hparams, (str, os.PathLike)):
        hparams = WISEHyperParams.from_hparams(os.fspath(hparams))
    check_model_name(hparams.model_name)
    return BaseEditor.from_hparams(hparams)
