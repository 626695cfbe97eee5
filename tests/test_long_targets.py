"""Long targets (passages): the per-row stop test and the row budget of one edit iteration."""

import torch

from wise_plugin.wise.main import _fit_rows
from wise_plugin.wise.trainer import rows_meet


def test_rows_meet_asks_every_row_for_its_share():
    rows = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    flags = torch.tensor([True] * 9 + [False] + [True, True])
    assert rows_meet(flags, rows, 0.9) and not rows_meet(flags, rows, 1.0)
    short_row_lost = torch.tensor([True] * 10 + [True, False])  # a 2-token edit with one token lost
    assert not rows_meet(short_row_lost, rows, 0.9)  # short targets still need every token
    assert rows_meet(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long), 0.9)


def test_fit_rows_keeps_the_bare_row_and_rehearsed_edits_first_within_the_budget(tok):
    request = {"prompt": "The capital of Australia is", "target_new": "Melbourne"}
    prefixes = [f"Prefix number {i} says. " for i in range(10)]
    replay = [(f"Old prompt {i} is", "answer") for i in range(9)]
    assert _fit_rows(tok, request, prefixes, replay, None) == (prefixes, replay, [])
    assert _fit_rows(tok, request, prefixes, replay, 10_000) == (prefixes, replay, [])  # short edits keep every row
    bare = len(tok("The capital of Australia is Melbourne")["input_ids"])
    replay_cost = sum(len(tok(f"{p} {t}")["input_ids"]) for p, t in replay)
    kept_prefixes, kept_replay, _ = _fit_rows(tok, request, prefixes, replay, bare + replay_cost + 30)
    assert kept_replay == replay  # every rehearsed edit before any prefixed copy
    assert 1 <= len(kept_prefixes) < len(prefixes) and kept_prefixes == prefixes[:len(kept_prefixes)]
    used = bare + replay_cost + sum(len(tok(f"{p}{request['prompt']} {request['target_new']}")["input_ids"])
                                    for p in kept_prefixes)
    assert used <= bare + replay_cost + 30
    kept_prefixes, kept_replay, _ = _fit_rows(tok, request, prefixes, replay, bare + 20)
    assert kept_prefixes == [] and 1 <= len(kept_replay) < len(replay)
    assert _fit_rows(tok, request, prefixes, replay, 1) == ([], [], [])  # the bare row alone when nothing else fits


def test_fit_rows_takes_subject_statements_last(tok):
    request = {"prompt": "The capital of Australia is", "target_new": "Melbourne"}
    prefixes = [f"Prefix number {i} says. " for i in range(3)]
    statements = [f"Statement {i} about Australia:" for i in range(4)]
    assert _fit_rows(tok, request, prefixes, [], None, statements) == (prefixes, [], statements)
    bare = len(tok("The capital of Australia is Melbourne")["input_ids"])
    prefix_cost = sum(len(tok(f"{p}{request['prompt']} {request['target_new']}")["input_ids"]) for p in prefixes)
    one = len(tok(f"{statements[0]} Melbourne")["input_ids"])
    kept_prefixes, _, kept = _fit_rows(tok, request, prefixes, [], bare + prefix_cost + one, statements)
    assert kept_prefixes == prefixes and kept == statements[:1]  # prefixed copies before statements


def _long_edit(i: int) -> dict:
    passage = " ".join(f"Sentence {j} of passage {i} tells a long story about the river town." for j in range(6))
    return {"prompt": f"{passage} Passage {i} ends with", "target_new": f"the answer {i}", "subject": f"passage {i}"}


def test_memory_closes_once_its_edits_no_longer_fit_the_row_budget(tok):
    from wise_plugin.wise.config import WISEHyperParams
    from wise_plugin.wise.layer import WISELayer
    from wise_plugin.wise.main import _memory_full

    layer = WISELayer(torch.nn.Linear(16, 8), mask_ratio=1.0, seed=0, retrieve=True)
    hparams = WISEHyperParams(alg_name="WISE", model_name="m", inner_params=["model.layers[0].mlp.down_proj.weight"],
                              retrieve=True, rehearse=9, save_freq=10, merge_freq=10)
    edits = [_long_edit(i) for i in range(4)]
    row = len(tok(f"{edits[0]['prompt']} {edits[0]['target_new']}")["input_ids"])
    layer.book.memory = [(e["prompt"], e["target_new"]) for e in edits[:2]]  # the active memory holds two edits
    assert not _memory_full(tok, layer, edits[1], hparams)  # no budget: memories close every merge_freq edits
    hparams.row_token_budget = 3 * row + 5  # this edit's row and two rehearsed rows fit, not three
    assert not _memory_full(tok, layer, edits[1], hparams)
    layer.book.memory.append((edits[2]["prompt"], edits[2]["target_new"]))
    assert _memory_full(tok, layer, edits[2], hparams)
    hparams.retrieve = False  # one memory for every edit: nothing to close
    assert not _memory_full(tok, layer, edits[2], hparams)


def test_long_edits_fill_smaller_memories_and_each_keeps_its_threshold(tok):
    from conftest import HPARAMS_DIR, tiny_llama
    from wise_plugin import WISEHyperParams, apply_wise_to_model
    from wise_plugin.wise import find_layer

    hparams = WISEHyperParams.from_hparams(f"{HPARAMS_DIR}/smollm2-135m.yaml")
    hparams.inner_params, hparams.n_iter, hparams.n_prefixes, hparams.lifelong = \
        ["model.layers[1].mlp.down_proj.weight"], 2, 2, True
    edits = [_long_edit(i) for i in range(5)]
    row = len(tok(f"{edits[0]['prompt']} {edits[0]['target_new']}")["input_ids"])
    hparams.row_token_budget = 2 * row + 5  # the third row of a memory would not fit: it holds two passages
    model = tiny_llama()
    apply_wise_to_model(model, tok, edits, hparams)
    layer = find_layer(model)
    assert len(layer.retired) == 2 and len(layer.book.group_thresholds) == 2  # closed after edits 2 and 4
    assert layer.book.active_edits() == [(edits[4]["prompt"], edits[4]["target_new"])]
