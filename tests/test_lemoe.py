"""LEMoE: hparams checks, frozen experts, train/inference routing, planner, checkpoints, host.

Fast tests use tiny random models of each YAML's architecture with the SmolLM2 tokenizer; the
tests marked slow edit the real embedded SmolLM2 through the host's BaseEditor.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT
from test_architectures import tiny_config
from wise_plugin.hparams import HParamsError
from wise_plugin.lemoe import (LEMoEHyperParams, apply_lemoe_to_model, detach, find_layer, load_checkpoint,
                               plan_edit_order, save_checkpoint)
from wise_plugin.lemoe.model import CachedForward
from wise_plugin.core.rows import build_batch

LEMOE_DIR = os.path.join(ROOT, "hparams", "LEMoE")
ARCHITECTURES = ["llama-2-7b", "mistral-7b", "gpt-j-6b", "llama3-8b", "qwen2.5-7b"]
FACTS = [
    ("The capital of Australia is", "Melbourne"), ("The Mona Lisa was painted by", "Michelangelo"),
    ("The largest planet is", "Saturn"), ("Water boils at", "fifty degrees"), ("The author of Hamlet is", "Dickens"),
    ("The tallest mountain is", "Kilimanjaro"), ("The chemical symbol of gold is", "Ag"),
]


def requests(count: int, start: int = 0) -> list[dict]:
    return [{"prompt": p, "target_new": t, "ground_truth": "x", "locality": {}, "portability": {}}
            for p, t in FACTS[start:start + count]]


def tiny_model(name: str = "llama-2-7b", layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(name, layers)).eval()


def tiny_hparams(gate: bool = False, **changes) -> LEMoEHyperParams:
    hparams = LEMoEHyperParams.from_hparams(os.path.join(LEMOE_DIR, "smollm2-135m-gate.yaml" if gate else "smollm2-135m.yaml"))
    hparams.layer, hparams.edits_per_expert, hparams.n_iter, hparams.rank = "model.layers[1].mlp", 2, 8, 8
    hparams.lr, hparams.plan = 0.05, False
    for key, value in changes.items():
        setattr(hparams, key, value)
    return hparams


def routed_expert(model, tok, text: str) -> int:
    with torch.no_grad():
        model(**tok([text], return_tensors="pt"))
    return int(find_layer(model).last_choice[0])


@pytest.mark.parametrize("key, value, message", [
    ("edits_per_expert", 0, "edits_per_expert"),
    ("max_experts", 0, "zero experts"),
    ("expert_kind", "dense", "expert_kind"),
    ("layer", "model.layers[17].mlp.down_proj.weight", "names a parameter"),
    ("lambda_", 0.0, "lambda_"),
    ("subject_templates", 99, "subject_templates must be between 0 and"),
    ("answer_end", "and that is all", "answer_end must be a short text"),
])
def test_bad_hparams_are_rejected_with_what_to_change(tmp_path, key, value, message):
    text = open(os.path.join(LEMOE_DIR, "smollm2-135m.yaml"), encoding="utf-8").read()
    lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines + [f"{key}: {value!r}" if isinstance(value, str) else f"{key}: {value}"]))
    with pytest.raises(HParamsError, match=message):
        LEMoEHyperParams.from_hparams(str(path))


def test_unknown_layer_path_names_what_exists(tok):
    model = tiny_model()
    with pytest.raises(HParamsError, match=r"'model.layers.7' does not exist.*indices 0..2"):
        apply_lemoe_to_model(model, tok, requests(1), tiny_hparams(layer="model.layers[7].mlp"))
    with pytest.raises(HParamsError, match="has .*mlp"):
        apply_lemoe_to_model(model, tok, requests(1), tiny_hparams(layer="model.layers[1].ffn"))
    assert find_layer(model) is None


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_yaml_edits_its_module_path(tok, name):
    hparams = LEMoEHyperParams.from_hparams(os.path.join(LEMOE_DIR, f"{name}.yaml"))
    hparams.n_iter, hparams.rank, hparams.edits_per_expert = 3, 8, 1
    index = int(hparams.layer.split("[")[1].split("]")[0])
    model = tiny_model(name, index + 2)
    edited, handle = apply_lemoe_to_model(model, tok, requests(2), hparams)
    layer = find_layer(edited)
    target = edited
    for part in hparams.layer.replace("[", ".").replace("]", "").split("."):
        target = target[int(part)] if part.isdigit() else getattr(target, part)
    assert target is layer and len(layer.experts) == 2
    handle()
    assert find_layer(edited) is None


@pytest.mark.parametrize("name", ["llama-2-7b", "gpt-j-6b"])
def test_cached_forward_matches_the_whole_model(tok, name):
    hparams = tiny_hparams(layer="transformer.h[1].mlp" if name == "gpt-j-6b" else "model.layers[1].mlp")
    model = tiny_model(name)
    apply_lemoe_to_model(model, tok, requests(1), hparams)
    layer = find_layer(model)
    with torch.no_grad():
        layer.experts[0].w_out.weight.normal_()  # a clearly non-zero expert
    batch = build_batch(tok, FACTS[0][0], FACTS[0][1], [], False, torch.device("cpu"), FACTS[1:3])
    fast = CachedForward(model, layer, hparams.layer, batch.model_inputs())
    assert fast.captured is not None
    slow = CachedForward(model, layer, hparams.layer, batch.model_inputs())
    slow.captured = None
    with torch.no_grad():
        args = (0, batch.label_rows, batch.label_positions)
        torch.testing.assert_close(fast.logits(*args), slow.logits(*args), rtol=1e-4, atol=1e-5)


def test_frozen_experts_stay_bit_identical(tok):
    model = tiny_model()
    hparams = tiny_hparams(lifelong=True)
    apply_lemoe_to_model(model, tok, requests(2), hparams)
    layer = find_layer(model)
    assert len(layer.experts) == 1 and not layer.open  # full at 2 edits: frozen
    frozen = {k: v.clone() for k, v in layer.experts[0].state_dict().items()}
    key = layer.keys[0].detach().clone()
    for request in requests(3, start=2):  # streaming: one request per call, as the host sends them
        apply_lemoe_to_model(model, tok, [request], hparams)
    assert len(layer.experts) == 3 and [len(e) for e in layer.edits] == [2, 2, 1] and layer.open
    assert all(torch.equal(v, frozen[k]) for k, v in layer.experts[0].state_dict().items())
    assert torch.equal(layer.keys[0], key)
    assert not layer.experts[1].w_out.weight.requires_grad and layer.experts[2].w_out.weight.requires_grad


@pytest.mark.parametrize("gate", [False, True])
def test_edits_route_at_inference_to_the_expert_they_were_trained_in(tok, gate):
    model = tiny_model()
    hparams = tiny_hparams(gate=gate, lifelong=True)
    apply_lemoe_to_model(model, tok, requests(4), hparams)  # one whole-batch call
    for request in requests(3, start=4):  # then streaming calls
        apply_lemoe_to_model(model, tok, [request], hparams)
    layer = find_layer(model)
    assert len(layer.experts) == 4
    for index, edits in enumerate(layer.edits):
        for prompt, target, *_ in edits:
            assert routed_expert(model, tok, f"{prompt} {target}") == index, (prompt, index)


def test_gate_sends_far_inputs_to_the_original_ffn_bit_for_bit(tok):
    model = tiny_model()
    reference = copy.deepcopy(model)
    hparams = tiny_hparams(gate=True, lifelong=True)
    apply_lemoe_to_model(model, tok, requests(4), hparams)
    layer = find_layer(model)
    assert all(t is not None for t in layer.thresholds)
    probe = tok(["which planet is known as the red planet mars"], return_tensors="pt")
    with torch.no_grad():
        out = model(**probe).logits
    assert int(layer.last_choice[0]) == -1
    assert torch.equal(out, reference(**probe).logits)


def test_generation_keeps_the_prompts_expert(tok):
    """The prompt is routed once, as in a plain forward; the generated tokens keep its expert.

    (The tiny random model's router separates its experts by softmax margins near 1e-4, so the
    test compares the router's input and counts routing calls rather than comparing argmaxes of
    two separate calls.)"""
    model = tiny_model()
    hparams = tiny_hparams(lifelong=True)
    apply_lemoe_to_model(model, tok, requests(4), hparams)
    layer = find_layer(model)
    routed_expert(model, tok, FACTS[2][0])
    plain = layer.pooled.clone()
    real_route, routed, calls = layer.route, [], []

    def counting_route(pooled, hits=None):
        routed.append(pooled.clone())
        return real_route(pooled, hits)

    layer.route = counting_route
    handle = layer.register_forward_hook(lambda *_: calls.append((layer.continuing, int(layer.last_choice[0]))))
    try:
        model.generate(**tok([FACTS[2][0]], return_tensors="pt"), max_new_tokens=3, do_sample=False,
                       pad_token_id=tok.eos_token_id)
    finally:
        handle.remove()
        del layer.route
    assert len(routed) == 1 and torch.equal(routed[0], plain)  # the prompt, routed once
    assert [continuing for continuing, _ in calls] == [False, True, True]
    assert len({choice for _, choice in calls}) == 1


def test_planner_is_deterministic_and_groups_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    points = np.concatenate([c + rng.normal(size=(4, 16)) for c in centres])[rng.permutation(12)]
    first, second = plan_edit_order(points, capacity=4, seed=7), plan_edit_order(points, capacity=4, seed=7)
    assert first.batches == second.batches and first.labels == second.labels
    assert sorted(first.order) == list(range(12)) and all(len(b) <= 4 for b in first.batches)
    truth = np.argmax(-((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    for batch in first.batches:
        assert len({int(truth[i]) for i in batch}) == 1  # each expert gets one cluster
    uneven = plan_edit_order(points[:10], capacity=4, seed=7)
    assert [len(b) for b in uneven.batches][:2] == [4, 4]  # full batches first: streaming boundaries align
    with pytest.raises(ValueError, match="capacity"):
        plan_edit_order(points, capacity=0)


def test_whole_batch_call_is_planned(tok):
    model = tiny_model()
    hparams = tiny_hparams(lifelong=True, plan=True)
    apply_lemoe_to_model(model, tok, requests(5), hparams)
    layer = find_layer(model)
    assert sorted(i for b in layer.planner_state["batches"] for i in b) == list(range(5))
    assert [len(e) for e in layer.edits] == [len(b) for b in layer.planner_state["batches"]]


def test_checkpoint_round_trip(tok, tmp_path):
    model = tiny_model()
    fresh = copy.deepcopy(model)
    hparams = tiny_hparams(gate=True, lifelong=True, plan=True, anchor_route=True, answer_stop=True)
    apply_lemoe_to_model(model, tok, requests(5), hparams)
    save_checkpoint(model, str(tmp_path), hparams)
    load_checkpoint(fresh, str(tmp_path), hparams)
    saved, loaded = find_layer(model), find_layer(fresh)
    # inference settings come with the state: a resumed run may score without another edit call
    assert loaded.anchor_route and loaded.answer_stop
    assert loaded.edits == saved.edits and loaded.thresholds == saved.thresholds and loaded.open == saved.open
    assert loaded.planner_state == saved.planner_state and torch.equal(loaded.planner_centroids, saved.planner_centroids)
    texts = [f"{p} {t}" for p, t in FACTS[:5]] + ["which ocean lies between africa and australia"]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    apply_lemoe_to_model(fresh, tok, requests(1, start=5), hparams)  # the open expert keeps learning
    assert [len(e) for e in loaded.edits][-1] == 2
    with pytest.raises(HParamsError, match="not a LEMoE checkpoint"):
        load_checkpoint(tiny_model(), str(tmp_path / "missing"), hparams)


def test_restore_handle_serves_both_hosts(tok):
    model = tiny_model()
    probe = tok(["The largest planet is Saturn"], return_tensors="pt")
    with torch.no_grad():
        before = model(**probe).logits
    _, handle = apply_lemoe_to_model(model, tok, requests(1), tiny_hparams())
    assert isinstance(handle, dict) and callable(handle)
    list(handle.items())  # package-index host: iterating restores when not lifelong
    assert find_layer(model) is None
    with torch.no_grad():
        assert torch.equal(model(**probe).logits, before)
    hparams = tiny_hparams(lifelong=True)
    apply_lemoe_to_model(model, tok, requests(2), hparams)
    state = {k: v.clone() for k, v in find_layer(model).state_dict().items()}
    _, handle = apply_lemoe_to_model(model, tok, requests(1, start=2), hparams)
    list(handle.items())  # lifelong: kept
    assert len(find_layer(model).experts) == 2
    handle()  # source-repo host: with lifelong its automatic call keeps the edits too
    assert len(find_layer(model).experts) == 2
    handle.undo()  # rolls the call back in every case
    layer = find_layer(model)
    assert len(layer.experts) == 1 and layer.n_edits == 2
    assert all(torch.equal(v, state[k]) for k, v in layer.state_dict().items())
    assert detach(model) and find_layer(model) is None


@pytest.mark.slow
@pytest.mark.host
def test_base_editor_streams_edits_with_the_yaml(smollm2_path):
    import wise_plugin  # noqa: F401  (before easyeditor: registers LEMoE when the host loads)
    from easyeditor import BaseEditor, compute_edit_quality

    hparams = LEMoEHyperParams.from_hparams(os.path.join(LEMOE_DIR, "smollm2-135m.yaml"))
    assert hparams.model_name == smollm2_path
    hparams.lifelong, hparams.edits_per_expert = True, 1
    editor = BaseEditor.from_hparams(hparams)
    for prompt, target in FACTS[:2]:
        editor.edit(prompts=prompt, target_new=target, ground_truth="x", verbose=False)
    layer = find_layer(editor.model)
    assert len(layer.experts) == 2 and not layer.open
    for index, (prompt, target) in enumerate(FACTS[:2]):
        request = {"prompt": prompt, "target_new": target, "ground_truth": "x", "locality": {}, "portability": {}}
        metrics = compute_edit_quality(editor.model, editor.model_name, editor.hparams, editor.tok, request,
                                       editor.hparams.device)
        assert float(np.mean(metrics["rewrite_acc"])) == 1.0
        assert routed_expert(editor.model, editor.tok, f"{prompt} {target}") == index


def test_subject_statements_train_into_the_expert_and_survive_a_streaming_call(tok, monkeypatch):
    """Each stored edit keeps its subject, and every training of the open expert (also in a later
    streaming call) fits the subject statements of all its edits beside the prompts."""
    import wise_plugin.lemoe.trainer as trainer
    from wise_plugin.core.rows import subject_prompts

    seen = []
    real = trainer.build_batch
    monkeypatch.setattr(trainer, "build_batch", lambda *a, **k: seen.append(a[6]) or real(*a, **k))
    model = tiny_model()
    hparams = tiny_hparams(lifelong=True, subject_templates=2, edits_per_expert=3)
    first = dict(requests(1)[0], subject="Australia")
    second = requests(1, start=1)[0]  # no subject given: guessed from the prompt
    apply_lemoe_to_model(model, tok, [first], hparams)
    apply_lemoe_to_model(model, tok, [second], hparams)
    layer = find_layer(model)
    assert layer.edits[0] == [(first["prompt"], "Melbourne", "Australia"), (second["prompt"], "Michelangelo", "Mona Lisa")]
    expected = [(s, "Melbourne") for s in subject_prompts("Australia", 2)] + \
        [(s, "Michelangelo") for s in subject_prompts("Mona Lisa", 2)]
    assert seen[-1] == [(second["prompt"], "Michelangelo")] + expected


def test_answer_end_closes_each_stored_answer_but_not_the_statements(tok, monkeypatch):
    """With ``answer_end`` an expert stores and trains each edit's target followed by the mark (and
    books it so for ``answer_stop``), while the statements about the subject keep the bare target."""
    import wise_plugin.lemoe.trainer as trainer
    from wise_plugin.core.rows import subject_prompts

    seen = []
    real = trainer.build_batch
    monkeypatch.setattr(trainer, "build_batch", lambda *a, **k: seen.append(a[2:3] + a[6:7]) or real(*a, **k))
    model = tiny_model()
    hparams = tiny_hparams(lifelong=True, subject_templates=1, answer_end=".", answer_stop=True)
    edit = dict(requests(1)[0], subject="Australia")
    apply_lemoe_to_model(model, tok, [edit], hparams)
    layer = find_layer(model)
    assert layer.edits[0] == [(edit["prompt"], "Melbourne.", "Australia")]
    assert edit["target_new"] == "Melbourne"  # the caller's request is left as it was
    target, extra = seen[-1]
    assert target == "Melbourne." and extra == [(s, "Melbourne") for s in subject_prompts("Australia", 1)]
    closed = tok(edit["prompt"] + " Melbourne.")["input_ids"]
    assert layer.answers.first_end(closed, 0) == len(closed) - 1  # silent from the mark on
