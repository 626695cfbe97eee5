"""Training one expert on its edits, the router on every stored anchor, and the gate thresholds."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from wise_plugin.lemoe.layer import LEMoELayer
from wise_plugin.lemoe.model import CachedForward
from wise_plugin.core.rows import build_batch, subject_prompts, without_answer_end

logger = logging.getLogger("wise_plugin.lemoe")


@dataclass
class ExpertResult:
    iterations: int
    loss: float


def train_expert(model: torch.nn.Module, layer: LEMoELayer, index: int, tok, hparams, device: torch.device) -> ExpertResult:
    """Fit expert ``index`` to all edits it holds: next-token NLL of each target given its prompt.

    Only this expert's weights get gradients; the model and all other experts stay frozen.
    """
    edits = [(prompt, target) for prompt, target, *_ in layer.edits[index]]
    # statements about each edit's subject, with its target (subject_templates; edits stored without a subject get
    # none), not closed by the answer_end mark (as WISE's, core/rows.py build_batch)
    statements = [(statement, without_answer_end(target, hparams.answer_end)) for _, target, *subject in layer.edits[index]
                  for statement in subject_prompts(subject[0] if subject else None, hparams.subject_templates)]
    batch = build_batch(tok, edits[0][0], edits[0][1], [], hparams.use_chat_template, device,
                        edits[1:] + statements)
    forward = CachedForward(model, layer, hparams.layer, batch.model_inputs())
    params = list(layer.experts[index].parameters())
    optimizer = torch.optim.AdamW(params, lr=hparams.lr, weight_decay=hparams.weight_decay)
    loss_value, step = float("nan"), 0
    with torch.enable_grad():
        for step in range(1, hparams.n_iter + 1):
            logits = forward.logits(index, batch.label_rows, batch.label_positions)
            loss = F.cross_entropy(logits.float(), batch.labels)
            loss_value = float(loss.detach())
            if loss_value < hparams.stop_loss:
                break
            _step(optimizer, loss)
    optimizer.zero_grad(set_to_none=True)  # no gradients left on the expert
    return ExpertResult(step, loss_value)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _cosines(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def train_router(layer: LEMoELayer, hparams, open_index: int) -> dict[str, float]:
    """Fit the router projection and the open expert's key so every stored edit routes to its
    own expert (and, with the gate, so irrelevant texts score low against every key).

    Frozen keys are constants here. Stops as soon as all anchors route correctly (and, with the
    gate, the edits score above ``gate_high`` and the irrelevant texts below ``gate_low``).
    """
    anchors, targets = layer.anchor_embeds, layer.anchor_expert
    key = layer.keys[open_index]
    params = list(layer.router.parameters())
    if key.requires_grad:
        params.append(key)
        if float(key.detach().norm()) == 0.0:  # a fresh key starts at the mean query of its edits
            with torch.no_grad():
                mean = layer.router(anchors[targets == open_index]).mean(0)
                key.copy_(F.normalize(mean, dim=0) * hparams.key_dim ** 0.5)
    pool = layer.pool_embeds if hparams.gate else None
    optimizer = torch.optim.AdamW(params, lr=hparams.router_lr, weight_decay=0.0)
    stats = {"steps": 0, "route_acc": 0.0}
    with torch.enable_grad():
        for step in range(hparams.router_iter + 1):
            keys = layer.key_matrix()
            query = layer.router(anchors)
            scores = query @ keys.T
            correct = float((scores.argmax(-1) == targets).float().mean())
            loss = F.cross_entropy(scores, targets) if keys.shape[0] > 1 else scores.sum() * 0.0
            done = correct == 1.0
            if pool is not None:
                own = _cosines(query, keys).gather(1, targets[:, None]).squeeze(1)
                away = _cosines(layer.router(pool), keys).max(dim=1).values
                loss = loss + F.relu(hparams.gate_high - own).mean() + F.relu(away - hparams.gate_low).mean()
                done = done and float(own.detach().min()) > float(away.detach().max())
            stats = {"steps": step, "route_acc": correct, "loss": float(loss.detach())}
            if done or step == hparams.router_iter:
                break
            _step(optimizer, loss)
    optimizer.zero_grad(set_to_none=True)  # no gradients left on the router and key
    return stats


@torch.no_grad()
def calibrate_gate(layer: LEMoELayer, hparams) -> None:
    """Per-expert cosine threshold between the irrelevant texts' best score and the lowest score
    of the expert's own edits (``gate_margin`` of the way up); never above what its edits reach."""
    if layer.pool_embeds is None or not len(layer.keys):
        return
    keys = layer.key_matrix()
    own = _cosines(layer.router(layer.anchor_embeds), keys)
    away = _cosines(layer.router(layer.pool_embeds), keys)
    for index in range(keys.shape[0]):
        mine = own[layer.anchor_expert == index, index]
        if mine.numel() == 0:
            layer.thresholds[index] = None
            continue
        low, high = float(away[:, index].max()), float(mine.min())
        threshold = low + hparams.gate_margin * (high - low) if high > low else high
        layer.thresholds[index] = min(threshold, high - 1e-4)
