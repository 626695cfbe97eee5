"""Checkpoints: save after some edits, load into a fresh model, keep editing; same result as no break."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import HPARAMS_DIR, tiny_llama
from wise_plugin import WISEHyperParams, apply_wise_to_model
from wise_plugin.hparams import HParamsError
from wise_plugin.wise import detach, find_layer, load_checkpoint, save_checkpoint

FACTS = [("The capital of Australia is", "Melbourne"), ("The Eiffel Tower stands in", "Rome"),
         ("The author of Hamlet is", "Goethe"), ("Water boils at", "forty degrees"),
         ("The largest planet is", "Mars"), ("The Danube flows into the", "Baltic Sea")]


def request(i: int) -> dict:
    prompt, target = FACTS[i]
    return {"prompt": prompt, "target_new": target, "ground_truth": "", "locality": {}, "portability": {}}


@pytest.fixture()
def tiny():
    return tiny_llama()


@pytest.fixture()
def hparams():
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml"))
    hparams.inner_params = ["model.layers[1].mlp.down_proj.weight"]
    # Small shards and merges so the saved state holds shard changes and a merged base.
    hparams.n_iter, hparams.n_prefixes, hparams.save_freq, hparams.merge_freq = 3, 2, 2, 4
    hparams.lifelong = True
    return hparams


@pytest.mark.parametrize("retrieve", [False, True])
def test_resumed_editing_matches_uninterrupted(tiny, tok, hparams, tmp_path, retrieve):
    hparams.retrieve = hparams.replay = hparams.refresh_threshold = retrieve
    hparams.route_by = "ratio" if retrieve else "score"
    straight = copy.deepcopy(tiny)
    for i in range(6):
        apply_wise_to_model(straight, tok, [request(i)], hparams)

    first = copy.deepcopy(tiny)
    for i in range(3):
        apply_wise_to_model(first, tok, [request(i)], hparams)
    save_checkpoint(first, str(tmp_path), hparams.inner_params[0])
    meta = json.loads((tmp_path / "wise_state.json").read_text())
    assert meta["edits"] == 3 and meta["n_shard_deltas"] == 1 and len(meta["memory"]) == 3
    assert len(meta["block_input_texts"]) == 3  # the fast path rehearses the active group's edits from these
    loaded = copy.deepcopy(tiny)
    load_checkpoint(loaded, str(tmp_path), hparams.inner_params[0])
    assert find_layer(loaded).route_by == hparams.route_by  # a loaded model routes as the saved one did
    assert find_layer(loaded).caches.kwargs_shared is True  # its next edit reuses the stored rehearsal states at once

    resumed = copy.deepcopy(tiny)  # a model that never saw the first three edits
    hparams.load_path = str(tmp_path)
    for i in range(3, 6):
        apply_wise_to_model(resumed, tok, [request(i)], hparams)

    a, b = find_layer(straight), find_layer(resumed)
    assert b.book.edits == 6 and b.book.shard_index == a.book.shard_index
    assert torch.allclose(a.side_weight, b.side_weight, atol=1e-6)
    assert torch.allclose(a.side_base, b.side_base, atol=1e-6)
    assert a.book.threshold == pytest.approx(b.book.threshold, rel=1e-5)
    assert torch.equal(a.mask, b.mask) and a.book.memory == b.book.memory
    assert a.book.answers.groups == b.book.answers.groups and sum(map(len, a.book.answers.groups)) == 6
    assert a.book.group_thresholds == pytest.approx(b.book.group_thresholds) and len(a.book.group_thresholds) == (1 if retrieve else 0)
    assert len(a.retired) == len(b.retired)
    for m in range(len(a.retired)):
        assert torch.equal(a.retired.delta(m, torch.float32), b.retired.delta(m, torch.float32))


def test_loaded_model_routes_as_the_saved_one_without_another_edit(tiny, tok, hparams, tmp_path):
    """A resumed run may only score (all edits were done before the break): the loaded model must
    then route with the saved anchor_route and answer_stop, not the defaults of a bare layer."""
    hparams.anchor_route = hparams.answer_stop = True
    edited = copy.deepcopy(tiny)
    for i in range(3):
        apply_wise_to_model(edited, tok, [dict(request(i), subject=FACTS[i][0].split()[-2])], hparams)
    save_checkpoint(edited, str(tmp_path), hparams.inner_params[0])
    loaded = copy.deepcopy(tiny)
    load_checkpoint(loaded, str(tmp_path), hparams.inner_params[0])
    assert find_layer(loaded).anchor_route and find_layer(loaded).answer_stop
    texts = [f"{p} {t} and {t}" for p, t in FACTS[:3]] + ["Rivers of Europe"]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, edited(**batch).logits, rtol=0, atol=0)


def test_load_into_another_dtype_uses_safe_loading(tiny, tok, hparams, tmp_path):
    apply_wise_to_model(tiny, tok, [request(0)], hparams)
    save_checkpoint(tiny, str(tmp_path), hparams.inner_params[0])
    meta = json.loads((tmp_path / "wise_state.json").read_text())
    tensors = load_file(str(tmp_path / meta["tensor_file"]))  # no pickle involved
    assert set(tensors) >= {"side_weight", "side_base", "mask"}

    other = copy.deepcopy(tiny)
    detach(other)
    other = other.to(torch.bfloat16)
    load_checkpoint(other, str(tmp_path), hparams.inner_params[0])
    layer = find_layer(other)
    assert layer.side_weight.dtype == torch.bfloat16
    assert torch.equal(layer.side_weight, find_layer(tiny).side_weight.to(torch.bfloat16))
    assert layer.book.threshold == find_layer(tiny).book.threshold


def test_bad_checkpoints_are_rejected(tiny, tok, hparams, tmp_path):
    with pytest.raises(HParamsError, match="is not a WISE checkpoint folder"):
        load_checkpoint(tiny, str(tmp_path / "nowhere"), hparams.inner_params[0])
    edited = copy.deepcopy(tiny)
    apply_wise_to_model(edited, tok, [request(0)], hparams)
    save_checkpoint(edited, str(tmp_path), hparams.inner_params[0])
    with pytest.raises(HParamsError, match=r"edits 'model.layers.1.mlp.down_proj', but inner_params names"):
        load_checkpoint(tiny, str(tmp_path), "model.layers[2].mlp.down_proj.weight")
