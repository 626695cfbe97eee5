"""LEMoE: lifelong editing with a mixture of experts (Wang & Li, EMNLP 2024) for EasyEdit.

One FFN gets a bypass of small experts; each batch of edits trains a new expert and key, earlier
ones are frozen; a KV-anchor router picks one expert per input; k-means plans the edit order.
"""

from wise_plugin.lemoe.checkpoint import load_checkpoint, save_checkpoint
from wise_plugin.lemoe.config import LEMoEHyperParams
from wise_plugin.lemoe.layer import LEMoELayer
from wise_plugin.lemoe.main import LEMoERestore, apply_lemoe_to_model
from wise_plugin.lemoe.model import detach, find_layer
from wise_plugin.lemoe.planner import EditPlan, plan_edit_order, plan_requests

__all__ = [
    "LEMoEHyperParams", "LEMoELayer", "LEMoERestore", "EditPlan", "apply_lemoe_to_model", "detach", "find_layer",
    "load_checkpoint", "plan_edit_order", "plan_requests", "save_checkpoint",
]
