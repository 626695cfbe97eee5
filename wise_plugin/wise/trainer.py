"""The WISE edit loop: margin routing loss plus target cross-entropy, masked SGD on the side memory.

Fast path: everything below the edited block is frozen, so its output is computed once per edit
and each iteration runs only the blocks from the edited one up, with logits only at the label
positions. The reference path runs the whole model every iteration; both give the same update.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from wise_plugin.wise.config import WISEHyperParams
from wise_plugin.wise.data import EditBatch
from wise_plugin.wise.layer import WISELayer
from wise_plugin.wise.model import StopForward, UpperStack

logger = logging.getLogger("wise_plugin.wise")


@dataclass
class EditResult:
    iterations: int
    edit_loss: float
    act_loss: float
    score: float  # routing score of the bare edit prompt after training


class _UpperForward:
    """Runs the edited block and those above it from a cached input of the edited block."""

    def __init__(self, model: nn.Module, stack: UpperStack, batch: EditBatch) -> None:
        self.stack = stack
        captured: dict[str, Any] = {}

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["args"], captured["kwargs"] = args, dict(kwargs)
            raise StopForward

        handle = stack.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                model(**batch.model_inputs(), use_cache=False)
        except StopForward:
            pass
        finally:
            handle.remove()
        args, self.kwargs = captured["args"], captured["kwargs"]
        if args:
            self.hidden, self.rest = args[0].detach(), args[1:]
        else:
            self.hidden, self.rest = self.kwargs.pop("hidden_states").detach(), ()

    def __call__(self, batch: EditBatch) -> torch.Tensor:
        hidden = self.hidden
        for block in self.stack.blocks:
            out = block(hidden, *self.rest, **self.kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        picked = hidden[batch.label_rows, batch.label_positions]
        if self.stack.norm is not None:
            picked = self.stack.norm(picked)
        return self.stack.head(picked)


def _reference_forward(model: nn.Module, batch: EditBatch) -> torch.Tensor:
    logits = model(**batch.model_inputs(), use_cache=False).logits
    return logits[batch.label_rows, batch.label_positions]


def _row_means(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(scores.dtype)
    return (scores * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def edit_scores(layer: WISELayer, batch: EditBatch) -> torch.Tensor:
    """Routing scores of the edit rows, over whole rows then over their prompt tokens only."""
    scores = layer.last_scores
    assert scores is not None
    return torch.cat([_row_means(scores, batch.edit_mask), _row_means(scores, batch.prompt_mask)])


def activation_loss(s_edit: torch.Tensor, s_loc: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Margin loss: irrelevant rows below alpha, edit rows above beta, and apart by gamma."""
    loss = F.relu(beta - s_edit).mean()
    if s_loc.numel():
        loss = loss + F.relu(s_loc - alpha).mean() + F.relu(s_loc[:, None] - s_edit[None, :] + gamma).mean()
    return loss


def train_edit(model: nn.Module, layer: WISELayer, stack: Optional[UpperStack], batch: EditBatch,
               loc_acts: torch.Tensor, loc_mask: torch.Tensor, hparams: WISEHyperParams) -> EditResult:
    """Train the side memory on one edit until the loss is small or ``n_iter`` is reached.

    ``loc_acts``/``loc_mask`` are cached projection inputs of irrelevant texts: their routing
    scores need no forward pass, so many of them can constrain every step at little cost.
    """
    forward = _UpperForward(model, stack, batch) if stack is not None else (lambda b: _reference_forward(model, b))
    frozen = [p for p in model.parameters() if p.requires_grad]  # no weight gradients for the base model
    for param in frozen:
        param.requires_grad_(False)
    layer.begin_edit()
    layer.editing = True
    layer.side_weight.requires_grad_(True)
    iterations, edit_loss, act_loss = 0, float("nan"), float("nan")
    try:
        for iterations in range(1, hparams.n_iter + 1):
            logits = forward(batch)
            ce = F.cross_entropy(logits.float(), batch.labels)
            s_edit = edit_scores(layer, batch)
            s_loc = _row_means(layer.token_scores(loc_acts), loc_mask)
            globals()["_ce"] = ce.item()
            act = activation_loss(s_edit, s_loc, hparams.alpha, hparams.beta, hparams.gamma)
            edit_loss, act_loss = ce.item(), act.item()
            if edit_loss < hparams.stop_loss and act_loss == 0.0:
                break
            layer.side_weight.grad = None
            (ce + hparams.act_weight * act).backward()
            layer.apply_update(layer.side_weight.grad, hparams.edit_lr, hparams.norm_constraint)
        layer.side_weight.grad = None
        layer.side_weight.requires_grad_(False)
        with torch.no_grad():
            forward(batch)
            s_edit = edit_scores(layer, batch)
        n = batch.input_ids.shape[0]
        score = float(torch.minimum(s_edit[0], s_edit[n]))  # bare prompt: full row and prompt only
    finally:
        for param in frozen:
            param.requires_grad_(True)
        layer.editing = False
        layer.side_weight.requires_grad_(False)
        layer.last_scores = None
    logger.debug("edit trained in %d iterations: edit loss %.4f, act loss %.4f, score %.3f",
                 iterations, edit_loss, act_loss, score)
    return EditResult(iterations, edit_loss, act_loss, score)
