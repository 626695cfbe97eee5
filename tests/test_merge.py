"""TIES merge of knowledge shards against a hand-computed example."""

from __future__ import annotations

import torch

from wise_plugin.wise.layer import WISELayer
from wise_plugin.wise.merge import merge_deltas

TAU1 = torch.tensor([[0.5, -0.2, 0.0], [0.1, 0.0, -0.4]])
TAU2 = torch.tensor([[-0.1, 0.3, 0.0], [0.2, -0.6, 0.0]])
# density 0.5 keeps the 3 largest magnitudes of each shard:
#   tau1 -> [[0.5, -0.2, 0], [0, 0, -0.4]]     tau2 -> [[0, 0.3, 0], [0.2, -0.6, 0]]
# elected sign of the sums [[0.5, 0.1, 0], [0.2, -0.6, -0.4]] -> [[+, +, +], [+, -, -]]
# mean of the kept entries that agree with it:
EXPECTED = torch.tensor([[0.5, 0.3, 0.0], [0.2, -0.6, -0.4]])


def test_ties_matches_hand_computation():
    merged = merge_deltas([TAU1, TAU2], "ties", densities=0.5, weights=1.0)
    torch.testing.assert_close(merged, EXPECTED)


def test_ties_shard_weight_scales_the_result():
    merged = merge_deltas([TAU1, TAU2], "ties", densities=0.5, weights=2.0)
    torch.testing.assert_close(merged, 2 * EXPECTED)


def test_layer_merges_every_merge_freq_edits_into_the_side_base():
    base = torch.nn.Linear(3, 2, bias=False)
    layer = WISELayer(base, mask_ratio=1.0, seed=0)  # full mask: the shard changes are exactly TAU1, TAU2
    original = base.weight.detach().clone()
    for tau in (TAU1, TAU2):
        layer.begin_edit()
        layer.apply_update(-tau, lr=1.0, norm_constraint=None)
        layer.finish_edit(1.0, 0.5, save_freq=1, merge_freq=2, merge_alg="ties", densities=0.5, weights=1.0)
    torch.testing.assert_close(layer.side_base, original + EXPECTED)
    torch.testing.assert_close(layer.side_weight.detach(), original + EXPECTED)
    assert layer.book.shard_deltas == [] and layer.book.edits == 2 and layer.book.shard_index == 2


def test_linear_merge_sums_every_shard():
    tau3 = torch.full_like(TAU1, 0.05)
    torch.testing.assert_close(merge_deltas([TAU1, TAU2, tau3], "linear", densities=None, weights=1.0), TAU1 + TAU2 + tau3)


def test_dare_ties_is_seeded_and_uses_every_shard():
    first = merge_deltas([TAU1, TAU2], "dare_ties", densities=0.5, weights=1.0, seed=3)
    assert torch.equal(first, merge_deltas([TAU1, TAU2], "dare_ties", densities=0.5, weights=1.0, seed=3))
    only_first = merge_deltas([TAU1, torch.zeros_like(TAU2)], "dare_ties", densities=1.0, weights=1.0)
    both = merge_deltas([TAU1, TAU2], "dare_ties", densities=1.0, weights=1.0)
    assert not torch.equal(only_first, both)  # the second shard changes the result
