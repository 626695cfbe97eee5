"""The WISE edit loop: margin routing loss plus target cross-entropy, masked SGD on the side memory.

Fast path: everything below the edited block is frozen, so its output is computed once per edit
and each iteration runs only the blocks from the edited one up, with logits only at the label
positions. The reference path runs the whole model every iteration; both give the same update.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from wise_plugin.wise.config import WISEHyperParams
from wise_plugin.core.rows import EditBatch
from wise_plugin.wise.layer import WISELayer, row_scores, token_scores
from wise_plugin.core.modules import BlockCall, UpperStack, block_calls, content_mask, mlp_at

logger = logging.getLogger("wise_plugin.wise")


@dataclass
class EditResult:
    iterations: int
    edit_loss: float
    act_loss: float
    score: float  # routing score of the bare edit prompt after training
    probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # its projection inputs, row and prompt masks
    block_input: Optional[torch.Tensor] = None  # fast path: hidden states of the bare row entering the edited block


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _same_inputs(x: Any, y: Any) -> bool:
    """Exact equality of nested block arguments (tensors by value, on any device; other objects by
    identity or value)."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                and x.dtype == y.dtype and bool(torch.equal(x.to(y.device), y)))
    if isinstance(x, (tuple, list)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_same_inputs, x, y))
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same_inputs(x[k], y[k]) for k in x)
    return x is y or (isinstance(x, (bool, int, float, str)) and x == y)


class _HeadCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of ``hidden @ weight^T (+ bias)`` against ``labels``, in one reused
    (tokens, vocab) buffer: the logits, then their softmax in place, then its gradient in place.
    Also returns whether each label is the top logit (not differentiable).

    With a 50k vocabulary the separate logits, log-softmax, its gradient and the zero-filled
    gradient of the loss were four fresh buffers per iteration, and filling them cost more than
    the head's matrix products.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                labels: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.mm(hidden, weight.t(), out=buffer)
        if bias is not None:
            logits.add_(bias)
        picked = logits.gather(1, labels[:, None]).squeeze(1)
        top = logits.max(dim=1, keepdim=True).values
        is_top = picked >= top.squeeze(1)  # the label is the greedy choice (for the learned-stop)
        ctx.mark_non_differentiable(is_top)
        probs = logits.sub_(top).exp_()
        total = probs.sum(dim=1, keepdim=True)
        probs.div_(total)
        ctx.probs, ctx.labels = probs, labels
        ctx.save_for_backward(weight)
        return (top.squeeze(1) + total.squeeze(1).log()) - picked, is_top

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _is_top: Any) -> tuple[Optional[torch.Tensor], ...]:
        (weight,) = ctx.saved_tensors
        probs = ctx.probs  # d(loss_i)/d(logits_i) = softmax_i - onehot(label_i)
        probs[torch.arange(probs.shape[0], device=probs.device), ctx.labels] -= 1.0
        probs.mul_(grad[:, None])
        ctx.probs = None
        return torch.mm(probs, weight), None, None, None, None


class _LocRows:
    """The irrelevant rows' projection inputs, real tokens only, packed once per edit."""

    def __init__(self, acts: torch.Tensor, mask: torch.Tensor) -> None:
        keep = mask.to(acts.device).bool()
        self.tokens = acts[keep]
        self.rows = keep.nonzero(as_tuple=True)[0]
        self.count = keep.sum(-1).clamp(min=1)

    def means(self, norms: torch.Tensor) -> torch.Tensor:
        """``row_scores`` of the packed rows: per-row mean of the token scores ``norms`` (one per packed token)."""
        return norms.new_zeros(self.count.shape[0]).index_add(0, self.rows, norms) / self.count


def edit_scores(scores: torch.Tensor, batch: EditBatch) -> torch.Tensor:
    """Routing scores of the edit rows, over whole rows then over their prompt tokens only."""
    return torch.cat([row_scores(scores, batch.edit_mask), row_scores(scores, batch.prompt_mask)])


class _FullForward:
    """The whole model every iteration. As the reference path it gets the irrelevant rows as token
    ids and runs them with the edit rows as one right-padded batch, so nothing is cached; for a
    layout the fast path does not know it gets their cached projection inputs and scores those."""

    def __init__(self, model: nn.Module, layer: WISELayer, batch: EditBatch,
                 loc: _LocRows | dict[str, torch.Tensor]) -> None:
        self.model, self.layer, self.loc = model, layer, loc
        self.rows, width = batch.input_ids.shape
        self.inputs = batch.model_inputs()
        if isinstance(loc, dict):
            full = max(width, loc["input_ids"].shape[1])
            self.inputs = {key: torch.cat([F.pad(self.inputs[key], (0, full - width)),
                                           F.pad(loc[key].to(batch.input_ids.device), (0, full - loc[key].shape[1]))])
                           for key in ("input_ids", "attention_mask")}

    def __call__(self, batch: EditBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-entropy of every target token, routing scores of the edit rows and of the irrelevant rows."""
        logits = self.model(**self.inputs, use_cache=False).logits
        picked = logits[batch.label_rows, batch.label_positions].float()
        labels = batch.labels.to(picked.device)
        token_ce = F.cross_entropy(picked, labels, reduction="none")
        self.is_top = picked.argmax(-1) == labels
        scores = self.layer.last_scores
        assert scores is not None
        s_edit = edit_scores(scores[:self.rows, :batch.input_ids.shape[1]], batch)
        if isinstance(self.loc, _LocRows):
            return token_ce, s_edit, self.loc.means(self.layer.token_scores(self.loc.tokens))
        loc_mask = content_mask(self.model, self.inputs["input_ids"][self.rows:], self.inputs["attention_mask"][self.rows:])
        return token_ce, s_edit, row_scores(scores[self.rows:], loc_mask)


class _UpperForward:
    """Runs the model from the edited projection up, from activations cached once per edit.

    The edited block's output is ``rest + projection(a)`` in pre-norm blocks (LLaMA, Mistral,
    Qwen2, GPT-J, GPT-2): ``rest`` and the projection input ``a`` are frozen, so each iteration
    only applies the side memory to ``a`` and runs the blocks above. The additivity is checked
    once per layer with a perturbed side memory; where it does not hold the edited block is rerun
    from its cached input instead.
    """

    def __init__(self, model: nn.Module, layer: WISELayer, stack: UpperStack, batch: EditBatch, loc: _LocRows,
                 rehearsed: Sequence[torch.Tensor] = ()) -> None:
        self.stack, self.layer, self.loc = stack, layer, loc
        self.real = batch.attention_mask.nonzero(as_tuple=True)  # (rows, positions) of the real tokens
        lengths = batch.attention_mask.sum(-1).tolist()
        n_new = len(lengths) - len(rehearsed)
        # Rows replaying earlier edits enter the edited block as they did before (cached): only the
        # new rows run through the lower blocks, when the lower and edited blocks take the same inputs.
        if (rehearsed and n_new > 0 and layer.caches.kwargs_shared
                and all(row.shape[0] == n for row, n in zip(rehearsed, lengths[n_new:]))):
            self.hidden, self.rest, self.kwargs = self._with_rehearsed(model, stack, batch, n_new, rehearsed)
        else:
            self.hidden, self.rest, self.kwargs = self._lower_forward(model, stack, batch)
        block = stack.blocks[0]
        captured: dict[str, torch.Tensor] = {}

        def grab_projection(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            captured["a"], captured["proj"] = args[0].detach(), out.detach()

        handle = layer.register_forward_hook(grab_projection)
        layer.editing = True  # one product (the memory being trained), not every stored memory's routing
        try:
            with torch.no_grad():
                out = _block_output(block(self.hidden, *self.rest, **self.kwargs))
        finally:
            handle.remove()
            layer.editing = False
        self.a = captured["a"]
        self.residual = out - captured["proj"]
        if layer.caches.block_is_additive is None:  # a property of the block's code: checked on the first edit
            layer.caches.block_is_additive = self._check_additive(block)
        self.additive = layer.caches.block_is_additive
        with torch.no_grad():  # the frozen part of the edited block's output: rest + W a
            self.fixed = self.residual + layer.base(self.a)
        # One product per iteration gives the side memory's output on the edit's real tokens and the
        # routing scores of both the edit and the irrelevant rows; padding is never multiplied.
        self.inputs = torch.cat([self.a[self.real], loc.tokens.to(self.a)])
        head = stack.head
        # float32 heads (the usual CPU case) use the fused cross-entropy; half-precision heads keep the
        # plain one, which upcasts only the picked logits, not the vocabulary matrix.
        self.fused_head = isinstance(head, nn.Linear) and head.weight.dtype == torch.float32
        self.labels = batch.labels.to(head.weight.device)
        if self.fused_head:
            self.head_buffer = head.weight.new_empty((self.labels.numel(), head.weight.shape[0]))

    def _lower_forward(self, model: nn.Module, stack: UpperStack, batch: EditBatch) -> BlockCall:
        """Input of the edited block for every row (hidden states, other arguments, keyword arguments).

        On a layer's first edit it also records whether the first lower block receives the same
        extra arguments (masks, positions) as the edited one, which reusing cached rows relies on.
        """
        check = self.layer.caches.kwargs_shared is None and bool(stack.lower)
        blocks = [stack.lower[0], stack.blocks[0]] if check else [stack.blocks[0]]
        calls = block_calls(model, blocks, batch.model_inputs(), stack.lower)
        if check:
            self.layer.caches.kwargs_shared = _same_inputs(calls[0][1:], calls[-1][1:])
        return calls[-1]

    def _with_rehearsed(self, model: nn.Module, stack: UpperStack, batch: EditBatch, n_new: int,
                        rehearsed: Sequence[torch.Tensor]) -> BlockCall:
        """Input of the edited block with the lower blocks run on the new rows only."""
        new_inputs = {"input_ids": batch.input_ids[:n_new], "attention_mask": batch.attention_mask[:n_new]}
        new_rows = block_calls(model, [stack.blocks[0]], new_inputs, stack.lower)[0][0]
        _, rest, kwargs = block_calls(model, [stack.lower[0]], batch.model_inputs())[0]  # masks, positions of all rows
        hidden = new_rows.new_zeros((batch.input_ids.shape[0], *new_rows.shape[1:]))
        hidden[:n_new] = new_rows
        for row, cached in enumerate(rehearsed, start=n_new):
            hidden[row, :cached.shape[0]] = cached.to(hidden)
        return hidden, rest, kwargs

    @torch.no_grad()
    def _check_additive(self, block: nn.Module) -> bool:
        kept = self.layer.side_weight.detach().clone()
        generator = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(kept.shape, generator=generator).to(kept) * kept.abs().mean().clamp(min=1e-3)
        self.layer.side_weight.add_(noise)
        self.layer.editing = True
        try:
            full = _block_output(block(self.hidden, *self.rest, **self.kwargs))
            split = self.residual + self.layer.project(self.a, self.layer.side_weight)
        finally:
            self.layer.editing = False
            self.layer.side_weight.copy_(kept)
        scale = full.abs().max().clamp(min=1.0)
        return bool(((full - split).abs().max() / scale) < 1e-4)

    def __call__(self, batch: EditBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-entropy of every target token, routing scores of the edit rows and of the irrelevant rows."""
        layer = self.layer
        if self.additive:
            out = layer.apply_delta(self.inputs, layer.weight_delta())
            norms = token_scores(out)
            n_real = self.real[0].numel()
            hidden = self.fixed.index_put(self.real, out[:n_real].to(self.fixed.dtype), accumulate=True)
            scores = norms.new_zeros(self.a.shape[:2]).index_put(self.real, norms[:n_real])
            s_loc = self.loc.means(norms[n_real:])
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
        if not self.additive:
            assert layer.last_scores is not None
            scores, s_loc = layer.last_scores, self.loc.means(layer.token_scores(self.loc.tokens))
        picked = hidden[batch.label_rows, batch.label_positions]
        if self.stack.norm is not None:
            picked = self.stack.norm(picked)
        head = self.stack.head
        if self.fused_head:
            picked = picked.to(head.weight.device)
            token_ce, self.is_top = _HeadCrossEntropy.apply(picked, head.weight, head.bias, self.labels,
                                                            self.head_buffer)
        else:
            logits = head(picked).float()
            token_ce = F.cross_entropy(logits, self.labels, reduction="none")
            self.is_top = logits.argmax(-1) == self.labels
        return token_ce, edit_scores(scores, batch), s_loc


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


def activation_loss(s_edit: torch.Tensor, s_loc: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Margin loss: irrelevant rows below alpha, edit rows above beta, and apart by gamma."""
    loss = F.relu(beta - s_edit).mean()
    if s_loc.numel():
        loss = loss + F.relu(s_loc - alpha).mean() + F.relu(s_loc[:, None] - s_edit[None, :] + gamma).mean()
    return loss


def _edit_balanced_weights(label_rows: torch.Tensor, first_rehearsed: int,
                           end_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Token weights that give every edit the same share of the target loss: the new edit (its bare
    and prefixed rows together) and each rehearsed earlier edit (one row each). A plain token mean
    lets the new edit's many copies outweigh the replayed edits, which are then forgotten; without
    rehearsal the weights are the plain mean.

    ``end_tokens`` (the ``answer_end`` mark) are not counted in an edit's share and get the weight
    of its answer tokens: counted, they would halve the weight of a one-token answer, and its
    paraphrases learn less of it."""
    edit_of_token = torch.where(label_rows >= first_rehearsed, label_rows - first_rehearsed + 1,
                                torch.zeros_like(label_rows))
    answer = torch.ones_like(label_rows, dtype=torch.bool) if end_tokens is None else ~end_tokens
    counts = torch.bincount(edit_of_token[answer], minlength=int(edit_of_token.max()) + 1)
    n_edits = int((counts > 0).sum())
    return 1.0 / (counts[edit_of_token].float().clamp(min=1) * n_edits)


def rows_meet(flags: torch.Tensor, rows: torch.Tensor, share: float) -> bool:
    """Whether, in every row that has tokens among ``flags`` (one bool per target token, its row in
    ``rows``), at least ``share`` of them are set: the stop rules' test, per edit row, so that one
    forgotten short edit is not hidden by the many tokens of the others."""
    if flags.numel() == 0:
        return True
    rows = rows.to(flags.device)
    counts = torch.bincount(rows)
    hits = torch.bincount(rows, weights=flags.float())
    present = counts > 0
    return bool((hits[present] >= share * counts[present] - 1e-6).all())


def train_edit(model: nn.Module, layer: WISELayer, stack: Optional[UpperStack], batch: EditBatch,
               loc: tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor], hparams: WISEHyperParams,
               rehearsed: Sequence[torch.Tensor] = ()) -> EditResult:
    """Train the side memory on one edit until the loss is small or ``n_iter`` is reached.

    ``loc`` holds the irrelevant rows: their cached projection inputs and token mask (their routing
    scores then need no forward pass, so many of them can constrain every step at little cost), or,
    for the reference path (no ``stack``), their token ids and attention mask, run through the
    whole model with the edit rows every iteration.
    """
    rows = _LocRows(*loc) if isinstance(loc, tuple) else loc
    if stack is not None:
        assert isinstance(rows, _LocRows), "the fast path takes the irrelevant rows' projection inputs"
        forward: _UpperForward | _FullForward = _UpperForward(model, layer, stack, batch, rows, rehearsed)
    else:
        forward = _FullForward(model, layer, batch, rows)
    frozen = [p for p in model.parameters() if p.requires_grad]  # no weight gradients for the base model
    for param in frozen:
        param.requires_grad_(False)
    step = _AdamStep() if hparams.optimizer == "adam" else (lambda grad: grad)
    layer.begin_edit()
    layer.editing = True
    layer.side_weight.requires_grad_(True)
    iterations, edit_loss, act_loss = 0, float("nan"), float("nan")
    # The learned-stop reads the bare edit row (row 0: every target token at least stop_token_prob)
    # and the rehearsed earlier edits (the last rows: every target token still the greedy choice),
    # so an edit does not end while the memory has lost an edit it replays.
    new_tokens = batch.label_rows == 0
    first_rehearsed = batch.input_ids.shape[0] - len(batch.rehearsed)
    rehearsed_tokens = batch.label_rows >= first_rehearsed
    token_weight = _edit_balanced_weights(batch.label_rows, first_rehearsed, batch.end_tokens)
    ready_at = None
    try:
        for iterations in range(1, hparams.n_iter + 1):
            layer.step_delta = layer.side_weight - layer.base.weight  # shared by every use in this step
            token_ce, s_edit, s_loc = forward(batch)
            ce = (token_ce * token_weight.to(token_ce.device)).sum()
            act = activation_loss(s_edit, s_loc.to(s_edit.device), hparams.alpha, hparams.beta, hparams.gamma)
            edit_loss, act_loss = ce.item(), act.item()
            separated = s_loc.numel() == 0 or hparams.act_ratio * s_edit.detach().min().item() > s_loc.detach().max().item()
            share = hparams.stop_token_share
            new_learned = hparams.stop_token_prob is not None and rows_meet(
                token_ce[new_tokens] < -math.log(hparams.stop_token_prob), batch.label_rows[new_tokens], share)
            is_top = forward.is_top
            kept = rows_meet(is_top[rehearsed_tokens.to(is_top.device)], batch.label_rows[rehearsed_tokens], share)
            learned = edit_loss < hparams.stop_loss or (new_learned and kept)
            greedy_ok = kept and separated and rows_meet(is_top[new_tokens.to(is_top.device)],
                                                         batch.label_rows[new_tokens], share)
            ready_at = (ready_at or iterations) if greedy_ok else None
            if learned and separated:
                break  # target learned and this edit already routes apart from the irrelevant rows
            if hparams.stop_patience is not None and ready_at is not None and iterations - ready_at >= hparams.stop_patience:
                break  # greedy-correct for stop_patience iterations; the probability bar is not being reached
            layer.side_weight.grad = None
            (ce + hparams.act_weight * act.to(ce.device)).backward()
            layer.apply_update(step(layer.side_weight.grad), hparams.edit_lr, hparams.norm_constraint)
        else:
            logger.info("edit reached n_iter=%d before the stop rule: target learned %s, rehearsed edits kept %s, "
                        "routes apart %s", hparams.n_iter, new_learned, kept, separated)
        layer.side_weight.grad = None
        layer.side_weight.requires_grad_(False)
        layer.end_edit()
        with torch.no_grad():  # routing scores need only the projection inputs, which are frozen
            if isinstance(forward, _UpperForward):
                layer.edit_delta(forward.a)
            else:
                model(**batch.model_inputs(), use_cache=False)
            assert layer.last_scores is not None
            s_edit = edit_scores(layer.last_scores, batch)
        n = batch.input_ids.shape[0]
        score = float(torch.minimum(s_edit[0], s_edit[n]))  # bare prompt: full row and prompt only
        real = batch.attention_mask[0].bool()
        probe = (layer.last_inputs[0][real.to(layer.last_inputs.device)].detach().clone(),
                 batch.edit_mask[0][real], batch.prompt_mask[0][real])
        block_input = forward.hidden[0][real.to(forward.hidden.device)].clone() if isinstance(forward, _UpperForward) else None
    finally:
        for param in frozen:
            param.requires_grad_(True)
        layer.end_edit()
        layer.editing = False
        layer.side_weight.requires_grad_(False)
        layer.last_scores = layer.last_inputs = None
    logger.debug("edit trained in %d iterations: edit loss %.4f, act loss %.4f, score %.3f",
                 iterations, edit_loss, act_loss, score)
    return EditResult(iterations, edit_loss, act_loss, score, probe, block_input)
