"""wise-plugin: WISE and LEMoE lifelong model editing for EasyEdit.

Importing the package prepares the host EasyEdit without importing it: an import hook makes the
package-index release importable on current transformers and CPU, and puts the plugin's editors
into the host's ``ALG_DICT`` as soon as ``easyeditor`` is imported (see :mod:`wise_plugin.host`).
"""

from __future__ import annotations

import logging

from wise_plugin.host import enable_host

__version__ = "0.5.0"

logger = logging.getLogger("wise_plugin")
logger.addHandler(logging.NullHandler())

enable_host()

from wise_plugin.editor import load_editor  # noqa: E402
from wise_plugin.lemoe import LEMoEHyperParams, apply_lemoe_to_model  # noqa: E402
from wise_plugin.wise import WISEHyperParams, apply_wise_to_model  # noqa: E402

__all__ = ["WISEHyperParams", "apply_wise_to_model", "LEMoEHyperParams", "apply_lemoe_to_model", "load_editor",
           "__version__"]
