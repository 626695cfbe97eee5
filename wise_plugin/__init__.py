"""wise-plugin: WISE lifelong model editing for EasyEdit.

Importing the package makes the host EasyEdit importable (package-index release on current
transformers and CPU) and registers the plugin's editors in the host's ``ALG_DICT``.
"""

from __future__ import annotations

import logging

from wise_plugin.host import import_host, register

__version__ = "0.1.0"

logger = logging.getLogger("wise_plugin")
logger.addHandler(logging.NullHandler())

import_host()

from wise_plugin.editor import load_editor  # noqa: E402
from wise_plugin.lemoe import LEMoEHyperParams, apply_lemoe_to_model  # noqa: E402
from wise_plugin.wise import WISEHyperParams, apply_wise_to_model  # noqa: E402

_REGISTERED = [register("WISE", apply_wise_to_model, upstream_alias="WISE-upstream"),
               register("LEMoE", apply_lemoe_to_model)]
logger.info("wise-plugin %s registered: %s", __version__, " | ".join(_REGISTERED))

__all__ = ["WISEHyperParams", "apply_wise_to_model", "LEMoEHyperParams", "apply_lemoe_to_model", "load_editor",
           "__version__"]
