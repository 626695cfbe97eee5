"""WISELayer on small real modules: mask confinement, per-row routing, snapshots, Conv1D layout."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from wise_plugin.wise.layer import WISELayer


def make_layer(mask_ratio: float = 0.2, seed: int = 0) -> WISELayer:
    torch.manual_seed(seed)
    return WISELayer(torch.nn.Linear(16, 8), mask_ratio=mask_ratio, seed=seed)


def test_updates_outside_the_mask_are_bit_identical():
    layer = make_layer()
    before = layer.side_weight.detach().clone()
    layer.begin_edit()
    for _ in range(5):
        layer.apply_update(torch.randn_like(before) * 3, lr=1.0, norm_constraint=0.5)
    after = layer.side_weight.detach()
    outside = ~layer.mask
    assert outside.any() and layer.mask.any()
    assert torch.equal(after[outside], before[outside])  # exact, bit for bit
    assert not torch.equal(after[layer.mask], before[layer.mask])
    assert (after - layer.base.weight).abs().max() <= 0.5 + 1e-6  # norm constraint


def test_masks_are_seeded_and_differ_between_shards():
    a, b = make_layer(seed=3), make_layer(seed=3)
    assert torch.equal(a.mask, b.mask)
    assert abs(a.mask.float().mean().item() - 0.2) < 0.1
    assert not torch.equal(a.book.draw_mask(0), a.book.draw_mask(1))


def test_per_row_routing_ignores_padding():
    layer = make_layer(mask_ratio=1.0)
    with torch.no_grad():
        layer.side_weight.add_(torch.randn_like(layer.side_weight))
    x = torch.randn(2, 4, 16) * 0.01
    x[0] *= 100  # row 0: large routing score
    x[1, :2] *= 1000  # row 1: large values only on padding positions
    layer.token_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    scores = layer.token_scores(x)
    row0, row1 = scores[0].mean(), scores[1, 2:].mean()
    layer.book.threshold = float((row0 + row1) / 2)
    out = layer(x)
    torch.testing.assert_close(out[0], layer.project(x[0], layer.side_weight))
    torch.testing.assert_close(out[1], layer.base(x[1]))


def test_no_threshold_means_main_memory_only():
    layer = make_layer(mask_ratio=1.0)
    with torch.no_grad():
        layer.side_weight.add_(1.0)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(layer(x), layer.base(x))


def test_generation_keeps_the_prompt_decision():
    layer = make_layer(mask_ratio=1.0)
    with torch.no_grad():
        layer.side_weight.add_(torch.randn_like(layer.side_weight))
    prompt = torch.randn(1, 6, 16) * 10
    layer.book.threshold = float(layer.token_scores(prompt).mean()) / 2
    layer(prompt)
    assert layer.cached_choice.tolist() == [0]
    layer.continuing = True  # a cached generation step: one new token with a tiny score
    step = torch.zeros(1, 1, 16)
    torch.testing.assert_close(layer(step), layer.project(step, layer.side_weight))


def test_snapshot_restore_round_trip():
    layer = make_layer()
    state = layer.snapshot()
    layer.begin_edit()
    layer.apply_update(torch.randn_like(layer.side_weight), lr=1.0, norm_constraint=None)
    layer.finish_edit(2.0, 0.5, save_freq=1, merge_freq=2, merge_alg="ties", densities=0.53, weights=1.0)
    layer.restore(state)
    assert torch.equal(layer.side_weight, state["side_weight"])
    assert layer.book.edits == 0 and layer.book.threshold is None and layer.book.shard_deltas == []


def test_conv1d_layout_matches_the_base_module():
    torch.manual_seed(0)
    conv = Conv1D(8, 16)  # GPT-2 layout: weight (in=16, out=8)
    layer = WISELayer(conv, mask_ratio=1.0, seed=0)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(layer.project(x, layer.side_weight), conv(x))
    assert layer.token_scores(x).abs().max() == 0


def test_rejects_modules_that_are_not_projections():
    with pytest.raises(TypeError, match="nn.Linear or GPT-2 Conv1D"):
        WISELayer(torch.nn.LayerNorm(4), mask_ratio=0.2, seed=0)


def _edit_towards(layer: WISELayer, direction: torch.Tensor, score: float) -> None:
    """One 'edit' whose side-memory change responds to inputs along ``direction``."""
    layer.begin_edit()
    change = torch.outer(direction, torch.ones(layer.side_weight.shape[1])) if layer.conv1d_layout \
        else torch.outer(torch.ones(layer.side_weight.shape[0]), direction)
    layer.apply_update(-change, lr=1.0, norm_constraint=None)
    layer.finish_edit(score, 0.5, save_freq=1, merge_freq=1, merge_alg="linear", densities=None, weights=1.0)


@pytest.mark.parametrize("conv1d", [False, True])
def test_retrieve_routes_each_row_to_its_own_memory(conv1d):
    torch.manual_seed(0)
    base = Conv1D(8, 16) if conv1d else torch.nn.Linear(16, 8)
    layer = WISELayer(base, mask_ratio=1.0, seed=0, retrieve=True)
    eye = torch.eye(16)
    for k in range(3):  # three merge groups, each retired as its own memory
        _edit_towards(layer, eye[k], score=2.0)
    assert len(layer.book.group_thresholds) == 3 and layer.book.threshold is None
    assert torch.equal(layer.side_weight, layer.base.weight)  # the next group starts from the main memory
    x = torch.stack([eye[2].repeat(3, 1), eye[0].repeat(3, 1), eye[9].repeat(3, 1)]) * 4
    out = layer(x)
    assert layer.cached_choice.tolist() == [2, 0, -1]
    for row, memory in enumerate([2, 0]):
        expected = layer.base(x[row]) + layer.apply_delta(x[row], layer._memory_delta(memory, x.dtype))
        torch.testing.assert_close(out[row], expected)
    torch.testing.assert_close(out[2], layer.base(x[2]))
    layer.continuing = True  # generation: the prompt's choice holds for the new token
    step = torch.zeros(3, 1, 16)
    torch.testing.assert_close(layer(step), layer.base(step))
    assert layer.cached_choice.tolist() == [2, 0, -1]


@pytest.mark.parametrize("route_by, expected", [("score", 0), ("ratio", 1)])
def test_retrieve_top1_rule_by_score_or_by_ratio_to_own_threshold(route_by, expected):
    """Memory 0 has a large score scale and a high threshold; memory 1 a small scale and a low one.
    An input above both thresholds goes to the larger raw score, or to the larger score/threshold."""
    layer = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    layer.route_by = route_by
    eye = torch.eye(16)
    _edit_towards(layer, 3 * eye[0], score=20.0)  # threshold 10
    _edit_towards(layer, eye[1], score=2.0)  # threshold 1
    x = (1.5 * eye[0] + 2 * eye[1]).repeat(1, 2, 1)  # scores 12.7 (ratio 1.27) and 5.7 (ratio 5.7)
    layer(x)
    assert layer.cached_choice.tolist() == [expected]


def test_retrieve_newest_rule_prefers_the_latest_memory_above_its_threshold():
    """Memory 0 scores higher in both raw score and ratio, but memory 1 also fires: "newest" picks 1;
    an input only memory 0 fires on still goes to 0."""
    layer = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    layer.route_by = "newest"
    eye = torch.eye(16)
    _edit_towards(layer, eye[0], score=2.0)  # threshold 1
    _edit_towards(layer, eye[1], score=2.0)  # threshold 1
    x = torch.stack([(3 * eye[0] + 0.5 * eye[1]).repeat(2, 1), (3 * eye[0]).repeat(2, 1)])
    scores = torch.stack([layer.apply_delta(x, layer._memory_delta(m, x.dtype)).norm(dim=-1).mean(1) for m in (0, 1)], dim=1)
    assert bool((scores[0] > 1).all()) and scores[0, 0] > scores[0, 1] and scores[1, 1] < 1
    layer(x)
    assert layer.cached_choice.tolist() == [1, 0]


def test_retrieve_state_survives_snapshot_restore():
    layer = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    _edit_towards(layer, torch.eye(16)[0], score=2.0)
    state = layer.snapshot()
    _edit_towards(layer, torch.eye(16)[1], score=2.0)
    assert len(layer.book.group_thresholds) == 2
    layer.restore(state)
    assert len(layer.book.group_thresholds) == 1 and len(layer.retired) == 1 and layer.book.group_start == 1
