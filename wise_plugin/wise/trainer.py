"""The WISE edit loop: margin routing loss plus target cross-entropy, masked SGD on the side memory.

Fast path: everything below the edited block is frozen, so its output is computed once per edit
and each iteration runs only the blocks from the edited one up, with logits only at the label
positions. The reference path runs the whole model every iteration; both give the same update.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from wise_plugin.wise.config import WISEHyperParams
from wise_plugin.wise.data import EditBatch
from wise_plugin.wise.layer import WISELayer
from wise_plugin.wise.model import StopForward, UpperStack, mlp_at

logger = logging.getLogger("wise_plugin.wise")


@dataclass
class EditResult:
    iterations: int
    edit_loss: float
    act_loss: float
    score: float  # routing score of the bare edit prompt after training
    probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # its projection inputs, row and prompt masks


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class _UpperForward:
    """Runs the model from the edited projection up, from activations cached once per edit.

    The edited block's output is ``rest + projection(a)`` in pre-norm blocks (LLaMA, Mistral,
    Qwen2, GPT-J, GPT-2): ``rest`` and the projection input ``a`` are frozen, so each iteration
    only applies the side memory to ``a`` and runs the blocks above. The additivity is checked
    once per edit with a perturbed side memory; where it does not hold the edited block is rerun
    from its cached input instead.
    """

    def __init__(self, model: nn.Module, layer: WISELayer, stack: UpperStack, batch: EditBatch) -> None:
        self.stack, self.layer = stack, layer
        self.real = batch.attention_mask.nonzero(as_tuple=True)  # (rows, positions) of the real tokens
        captured: dict[str, Any] = {}

        def grab_block_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["args"], captured["kwargs"] = args, dict(kwargs)

        def grab_projection(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            captured["a"], captured["proj"] = args[0].detach(), out.detach()

        def grab_block_output(module: nn.Module, args: tuple, out: Any) -> None:
            captured["out"] = _block_output(out).detach()
            raise StopForward

        block = stack.blocks[0]
        handles = [block.register_forward_pre_hook(grab_block_input, with_kwargs=True),
                   layer.register_forward_hook(grab_projection), block.register_forward_hook(grab_block_output)]
        try:
            with torch.no_grad(), mlp_at(stack.lower, self.real):
                model(**batch.model_inputs(), use_cache=False)
        except StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        args, self.kwargs = captured["args"], captured["kwargs"]
        if args:
            self.hidden, self.rest = args[0].detach(), args[1:]
        else:
            self.hidden, self.rest = self.kwargs.pop("hidden_states").detach(), ()
        self.a = captured["a"]
        self.residual = captured["out"] - captured["proj"]
        self.additive = self._check_additive(block)
        with torch.no_grad():  # the frozen part of the edited block's output: rest + W a
            self.fixed = self.residual + layer.base(self.a)

    @torch.no_grad()
    def _check_additive(self, block: nn.Module) -> bool:
        kept = self.layer.side_weight.detach().clone()
        generator = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(kept.shape, generator=generator).to(kept) * kept.abs().mean().clamp(min=1e-3)
        self.layer.side_weight.add_(noise)
        self.layer.editing = True
        try:
            full = _block_output(block(self.hidden, *self.rest, **self.kwargs))
            split = self.residual + self.layer._project(self.a, self.layer.side_weight)
        finally:
            self.layer.editing = False
            self.layer.side_weight.copy_(kept)
        scale = full.abs().max().clamp(min=1.0)
        return bool(((full - split).abs().max() / scale) < 1e-4)

    def __call__(self, batch: EditBatch) -> torch.Tensor:
        if self.additive:
            hidden = self.fixed + self.layer.edit_delta(self.a)
            blocks = self.stack.blocks[1:]
        else:
            hidden, blocks = self.hidden, self.stack.blocks
        labels = (batch.label_rows, batch.label_positions)
        for index, block in enumerate(blocks):
            if block is self.stack.blocks[0]:  # holds the side memory, whose routing reads every token
                hidden = _block_output(block(hidden, *self.rest, **self.kwargs))
                continue
            with mlp_at([block], labels if index == len(blocks) - 1 else self.real):
                hidden = _block_output(block(hidden, *self.rest, **self.kwargs))
        picked = hidden[batch.label_rows, batch.label_positions]
        if self.stack.norm is not None:
            picked = self.stack.norm(picked)
        return self.stack.head(picked)


class _AdamStep:
    """Adam's update direction (bias-corrected, no weight decay) for one edit; the caller masks it."""

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.betas, self.eps, self.count = betas, eps, 0
        self.m: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    @torch.no_grad()
    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.float()
        if self.m is None:
            self.m, self.v = torch.zeros_like(grad), torch.zeros_like(grad)
        self.count += 1
        b1, b2 = self.betas
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.count)
        v_hat = self.v / (1 - b2**self.count)
        return m_hat / (v_hat.sqrt() + self.eps)


def _reference_forward(model: nn.Module, batch: EditBatch) -> torch.Tensor:
    logits = model(**batch.model_inputs(), use_cache=False).logits
    return logits[batch.label_rows, batch.label_positions]


def _row_means(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(device=scores.device, dtype=scores.dtype)
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
    forward = _UpperForward(model, layer, stack, batch) if stack is not None else (lambda b: _reference_forward(model, b))
    frozen = [p for p in model.parameters() if p.requires_grad]  # no weight gradients for the base model
    for param in frozen:
        param.requires_grad_(False)
    step = _AdamStep() if hparams.optimizer == "adam" else (lambda grad: grad)
    layer.begin_edit()
    layer.editing = True
    layer.side_weight.requires_grad_(True)
    iterations, edit_loss, act_loss = 0, float("nan"), float("nan")
    try:
        for iterations in range(1, hparams.n_iter + 1):
            logits = forward(batch)
            token_ce = F.cross_entropy(logits.float(), batch.labels.to(logits.device), reduction="none")
            ce = token_ce.mean()
            s_edit = edit_scores(layer, batch)
            s_loc = _row_means(layer.token_scores(loc_acts), loc_mask)
            act = activation_loss(s_edit, s_loc.to(s_edit.device), hparams.alpha, hparams.beta, hparams.gamma)
            edit_loss, act_loss = ce.item(), act.item()
            separated = s_loc.numel() == 0 or hparams.act_ratio * s_edit.detach().min().item() > s_loc.detach().max().item()
            learned = edit_loss < hparams.stop_loss or (hparams.stop_token_prob is not None and bool(
                (token_ce[batch.label_rows == 0] < -math.log(hparams.stop_token_prob)).all()))  # row 0: the bare edit
            if learned and separated:
                break  # target learned and this edit already routes apart from the irrelevant rows
            layer.side_weight.grad = None
            (ce + hparams.act_weight * act.to(ce.device)).backward()
            layer.apply_update(step(layer.side_weight.grad), hparams.edit_lr, hparams.norm_constraint)
        layer.side_weight.grad = None
        layer.side_weight.requires_grad_(False)
        with torch.no_grad():  # routing scores need only the projection inputs, which are frozen
            if isinstance(forward, _UpperForward):
                layer.edit_delta(forward.a)
            else:
                forward(batch)
            s_edit = edit_scores(layer, batch)
        n = batch.input_ids.shape[0]
        score = float(torch.minimum(s_edit[0], s_edit[n]))  # bare prompt: full row and prompt only
        real = batch.attention_mask[0].bool()
        probe = (layer.last_inputs[0][real.to(layer.last_inputs.device)].detach().clone(),
                 batch.edit_mask[0][real], batch.prompt_mask[0][real])
    finally:
        for param in frozen:
            param.requires_grad_(True)
        layer.editing = False
        layer.side_weight.requires_grad_(False)
        layer.last_scores = layer.last_inputs = None
    logger.debug("edit trained in %d iterations: edit loss %.4f, act loss %.4f, score %.3f",
                 iterations, edit_loss, act_loss, score)
    return EditResult(iterations, edit_loss, act_loss, score, probe)
