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


def test_fit_rows_keeps_the_bare_row_and_alternates_within_the_budget(tok):
    request = {"prompt": "The capital of Australia is", "target_new": "Melbourne"}
    prefixes = [f"Prefix number {i} says. " for i in range(10)]
    replay = [(f"Old prompt {i} is", "answer") for i in range(9)]
    assert _fit_rows(tok, request, prefixes, replay, None) == (prefixes, replay)
    assert _fit_rows(tok, request, prefixes, replay, 10_000) == (prefixes, replay)  # short edits keep every row
    bare = len(tok("The capital of Australia is Melbourne")["input_ids"])
    kept_prefixes, kept_replay = _fit_rows(tok, request, prefixes, replay, bare + 30)
    assert kept_prefixes == prefixes[:len(kept_prefixes)] and kept_replay == replay[:len(kept_replay)]
    assert 1 <= len(kept_prefixes) and 1 <= len(kept_replay) and abs(len(kept_prefixes) - len(kept_replay)) <= 1
    used = bare + sum(len(tok(f"{p}{request['prompt']} {request['target_new']}")["input_ids"]) for p in kept_prefixes) \
        + sum(len(tok(f"{p} {t}")["input_ids"]) for p, t in kept_replay)
    assert used <= bare + 30
    assert _fit_rows(tok, request, prefixes, replay, 1) == ([], [])  # the bare row alone when nothing else fits
