"""Retired WISE-Retrieve memories kept sparse, routing that scores only anchor candidates, and the
bounded replay reservoir."""

import pytest
import torch

from wise_plugin.wise.layer import WISELayer, row_scores, token_scores
from wise_plugin.wise.memory import MemoryBook
from wise_plugin.wise.retired import RetiredMemories, pack_bits, unpack_bits


@pytest.mark.parametrize("numel", [1, 8, 13, 1000])
def test_pack_bits_round_trip(numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (numel + 7) // 8
    assert torch.equal(unpack_bits(packed, numel), mask)


def _masked_change(shape, ratio=0.2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * (torch.rand(shape, generator=generator) < ratio)


def test_retired_memories_keep_the_support_only_and_rebuild_the_change():
    shape = torch.Size((64, 256))
    exact = RetiredMemories(shape, torch.device("cpu"), dtype=torch.float32, dense_cache=1)
    compact = RetiredMemories(shape, torch.device("cpu"), dtype=torch.float16, dense_cache=1)
    changes = [_masked_change(shape, seed=s) for s in range(3)]
    for change in changes:
        exact.add(change)
        compact.add(change)
    for memory, change in enumerate(changes):  # evicted from the one-slot cache and rebuilt each time
        assert torch.equal(exact.delta(memory, torch.float32), change)
        torch.testing.assert_close(compact.delta(memory, torch.float32), change, rtol=1e-3, atol=1e-3)
        assert torch.equal(compact.delta(memory, torch.float32) != 0, change != 0)
    dense_bytes = 3 * shape.numel() * 4
    # a 0.2 mask in float16 plus one bit per entry: 0.525 bytes an entry, about 0.13 of dense float32
    assert compact.nbytes() < 0.14 * dense_bytes
    assert compact.cache_nbytes() == shape.numel() * 4  # one dense memory cached, not counted as kept
    state = compact.state()
    compact.add(_masked_change(shape, seed=9))
    compact.restore(state)
    assert len(compact) == 3


def _anchored_layer(memories: int, conv1d: bool = False) -> WISELayer:
    """A WISE-Retrieve layer with ``memories`` retired memories, memory k trained towards input e_k."""
    torch.manual_seed(0)
    layer = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    layer.retired.dtype = torch.float32
    eye = torch.eye(16)
    for k in range(memories):
        layer.begin_edit()
        layer.apply_update(-torch.outer(torch.ones(8), eye[k]), lr=1.0, norm_constraint=None)
        layer.finish_edit(2.0, 0.5, save_freq=1, merge_freq=1, merge_alg="linear", densities=None, weights=1.0)
    return layer


def _dense_rule(layer: WISELayer, x: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """The routing rule computed the plain way: every memory scored on every row."""
    scores = torch.stack([row_scores(token_scores(layer.apply_delta(x, layer._memory_delta(m, x.dtype))),
                                     torch.ones(x.shape[:2])) for m in range(len(layer.thresholds()))], dim=1)
    above = (scores > torch.tensor(layer.thresholds())) & hits
    best = torch.where(above, scores, torch.full_like(scores, -float("inf"))).argmax(dim=-1)
    return torch.where(above.any(dim=-1), best, torch.full_like(best, -1))


def test_routing_scores_only_the_memories_a_row_names_and_equals_the_dense_rule():
    layer = _anchored_layer(6)
    eye = torch.eye(16)
    x = torch.stack([(4 * eye[k] + 0.5 * eye[(k + 1) % 16]).repeat(3, 1) for k in (0, 2, 3, 5, 9)])
    hits = torch.zeros(5, 6, dtype=torch.bool)
    hits[0, 0] = hits[1, 2] = hits[1, 3] = hits[3, [4, 5]] = True  # row 2 names no memory; row 4 names 4
    hits[4, 4] = True
    layer.anchor_hits = hits
    scored = []
    original = layer.retired.delta
    layer.retired.delta = lambda memory, dtype: scored.append(memory) or original(memory, dtype)
    out = layer(x)
    assert sorted(scored) == [0, 2, 3, 4, 5]  # memory 1 is named by no row: never rebuilt nor scored
    assert torch.equal(layer.cached_choice, _dense_rule(layer, x, hits))
    assert layer.cached_choice.tolist() == [0, 2, -1, 5, -1]
    for row, memory in ((0, 0), (1, 2), (3, 5)):
        torch.testing.assert_close(out[row], layer.base(x[row]) + layer.apply_delta(x[row], layer._memory_delta(memory, x.dtype)))
    torch.testing.assert_close(out[2], layer.base(x[2]))


def test_routing_without_anchors_matches_the_dense_rule_on_random_inputs():
    layer = _anchored_layer(5)
    layer.anchor_hits = None
    x = torch.randn(7, 4, 16) * 3
    layer(x)
    assert torch.equal(layer.cached_choice, _dense_rule(layer, x, torch.ones(7, 5, dtype=torch.bool)))


def test_replay_reservoir_is_every_earlier_edit_until_full_then_a_bounded_seeded_sample():
    def book_after(edits: int) -> MemoryBook:
        book = MemoryBook(torch.Size((2, 2)), torch.device("cpu"), 0.5, seed=3)
        book.group_start = edits
        return book

    small = book_after(20)
    assert small.replay_reservoir(32) == list(range(20))
    grown, stepwise = book_after(500), book_after(0)
    for start in range(10, 501, 10):  # memories retired ten edits at a time, as in the shipped recipe
        stepwise.group_start = start
        stepwise.replay_reservoir(32)
    assert stepwise.replay_reservoir(32) == grown.replay_reservoir(32)  # same draw however it is reached
    reservoir = grown.replay_reservoir(32)
    assert len(reservoir) == 32 == len(set(reservoir)) and all(0 <= i < 500 for i in reservoir)
    assert max(reservoir) > 300  # later edits enter the sample
    restored = book_after(0)
    restored.restore({**grown.snapshot()})
    assert restored.replay_reservoir(32) == reservoir


def test_checkpoints_with_a_dense_group_stack_load_as_sparse_memories():
    layer = _anchored_layer(3)
    tensors, meta = layer.checkpoint_state()
    assert meta["retired"] == 3 and "retired.2.values" in tensors
    stack = torch.cat([layer.retired.delta(m, torch.float32) for m in range(3)], dim=0)  # version-2 layout
    legacy = {"side_weight": tensors["side_weight"], "side_base": tensors["side_base"], "group_stack": stack}
    other = _anchored_layer(0)
    other.load_checkpoint_state(legacy, {k: v for k, v in meta.items() if k != "retired"})
    assert len(other.retired) == 3
    for m in range(3):
        assert torch.equal(other.retired.delta(m, torch.float32), layer.retired.delta(m, torch.float32))


def test_low_rank_memories_keep_their_factors_when_smaller_and_rebuild_the_change():
    shape = torch.Size((64, 256))
    generator = torch.Generator().manual_seed(3)
    low = torch.randn(64, 4, generator=generator) @ torch.randn(4, 256, generator=generator)  # rank 4, dense
    memories = RetiredMemories(shape, torch.device("cpu"), dtype=torch.float32, dense_cache=0, rank=4)
    assert memories.add(low) is False and not memories.is_exact(0)
    torch.testing.assert_close(memories.delta(0, torch.float32), low, rtol=1e-4, atol=1e-4)
    assert memories.nbytes() == 4 * (64 + 256) * 4  # the two factors, not the 64 x 256 change
    # a change whose support and values are smaller than the factors is kept exactly
    sparse = _masked_change(shape, ratio=0.01, seed=4)
    assert memories.add(sparse) is True and memories.is_exact(1)
    assert torch.equal(memories.delta(1, torch.float32), sparse)
    # without a rank a dense change is kept exactly, whatever it costs
    exact = RetiredMemories(shape, torch.device("cpu"), dtype=torch.float32)
    assert exact.add(low) is True and torch.equal(exact.delta(0, torch.float32), low)


def test_a_low_rank_memory_lowers_its_threshold_to_its_edits_scores_and_checkpoints_round_trip():
    torch.manual_seed(0)
    layer = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    layer.retired.dtype, layer.retired.rank = torch.float32, 1
    acts = torch.randn(3, 5, 16)
    probes = [(acts[i], torch.ones(5), torch.ones(5)) for i in range(3)]
    layer.begin_edit()
    layer.apply_update(-torch.randn(8, 16), lr=0.5, norm_constraint=None)  # a full-rank change
    exact_lowest = layer.probe_scores(probes)
    layer.book.probes = list(probes)
    layer.book.min_edit_score, layer.book.threshold = exact_lowest, 0.9 * exact_lowest
    layer.book.save_shard(layer.side_weight)
    layer._merge("linear", None, 1.0, act_ratio=0.9)
    assert len(layer.retired) == 1 and not layer.retired.is_exact(0)
    kept = layer.retired.delta(0, torch.float32)
    assert torch.linalg.matrix_rank(kept) == 1
    kept_lowest = layer.probe_scores(probes, kept)
    assert kept_lowest < exact_lowest  # rank 1 of a random 8 x 16 change scores the rows lower
    assert layer.thresholds()[0] == pytest.approx(0.9 * kept_lowest)  # so every stored row still routes
    tensors, meta = layer.checkpoint_state()
    assert "retired.0.left" in tensors and "retired.0.support" not in tensors
    other = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    other.load_checkpoint_state(tensors, meta)
    assert torch.equal(other.retired.delta(0, torch.float32), kept)
