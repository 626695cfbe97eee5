"""WISE: dual parametric memory editing (side memory, routing, knowledge shards, TIES merge)."""

from wise_plugin.wise.caches import SetupCache
from wise_plugin.wise.checkpoint import load_checkpoint, save_checkpoint
from wise_plugin.wise.config import WISEHyperParams
from wise_plugin.wise.layer import WISELayer
from wise_plugin.wise.main import WISERestore, apply_wise_to_model
from wise_plugin.wise.model import detach, find_layer

__all__ = [
    "SetupCache", "WISEHyperParams", "WISELayer", "WISERestore", "apply_wise_to_model", "detach", "find_layer",
    "load_checkpoint", "save_checkpoint",
]
