"""Real WISE edits on the embedded SmolLM2, directly and through the host EasyEdit's BaseEditor."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import wise_plugin
from wise_plugin.evaluation import greedy_answer
from wise_plugin.hparams import HParamsError
from wise_plugin.wise import apply_wise_to_model, find_layer

pytestmark = pytest.mark.slow

EDITS = [
    {"prompt": "The capital of Australia is", "target_new": "Melbourne", "ground_truth": "Canberra"},
    {"prompt": "The Mona Lisa was painted by", "target_new": "Michelangelo", "ground_truth": "Leonardo da Vinci"},
]
PROBE = "The chemical symbol for iron is Fe"


def request(i: int) -> dict:
    return dict(EDITS[i], locality={}, portability={})


def logits(model, tok, text: str = PROBE) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def rewrite_acc(editor, req: dict) -> float:
    from easyeditor import compute_edit_quality

    return float(np.mean(compute_edit_quality(editor.model, editor.model_name, editor.hparams, editor.tok, req,
                                              editor.hparams.device)["rewrite_acc"]))


@pytest.mark.host
def test_lifelong_edits_accumulate_across_base_editor_calls(smollm2_hparams):
    smollm2_hparams.lifelong = True
    editor = wise_plugin.load_editor(smollm2_hparams)
    for i in range(2):
        editor.edit(prompts=EDITS[i]["prompt"], target_new=EDITS[i]["target_new"],
                    ground_truth=EDITS[i]["ground_truth"], verbose=False)
    layer = find_layer(editor.model)
    assert layer is not None and layer.book.edits == 2
    assert [m for m, _ in layer.book.memory] == [e["prompt"] for e in EDITS]
    assert rewrite_acc(editor, request(0)) == 1.0 and rewrite_acc(editor, request(1)) == 1.0
    assert "Michelangelo" in greedy_answer(editor.model, editor.tok, EDITS[1]["prompt"])


@pytest.mark.host
def test_batched_generation_gives_each_row_the_answer_it_gets_alone_after_edits(smollm2_hparams):
    """The runner answers prompts in left-padded batches: padding is masked out of attention and of
    WISE's routing and anchors, so every row (edited, rephrased, unrelated, of any length) gets the
    tokens and the WILD answer it gets alone."""
    from wise_plugin.evaluation import greedy_ids, greedy_ids_many, wild_answer, wild_answers

    smollm2_hparams.lifelong = True
    editor = wise_plugin.load_editor(smollm2_hparams)
    for edit in EDITS:
        editor.edit(prompts=edit["prompt"], target_new=edit["target_new"], ground_truth=edit["ground_truth"],
                    verbose=False)
    prompts = [EDITS[0]["prompt"], "Who painted the Mona Lisa? The painter was", "The capital of Canada is",
               EDITS[1]["prompt"], "Water boils at", "The author of the novel Moby-Dick, published in 1851, is"]
    targets = ["Melbourne", "Michelangelo", "Ottawa", "Michelangelo", "100 degrees", "Herman Melville"]
    model, tok = editor.model, editor.tok
    alone = [greedy_ids(model, tok, p, 10) for p in prompts]
    assert greedy_ids_many(model, tok, prompts, 10, batch_size=4) == alone
    assert any(tok.decode(ids).strip().startswith("Melbourne") for ids in alone[:1])  # the edit is in force
    assert wild_answers(model, tok, prompts, targets, batch_size=6) == [wild_answer(model, tok, p, t)
                                                                        for p, t in zip(prompts, targets)]


def test_answer_end_closes_the_new_answer_in_free_generation(smollm2, smollm2_hparams):
    """With ``answer_end`` the memory learns the mark after the answer and is booked with it, so
    greedy output writes the answer, closes it, and a generation-based score that stops at the
    first '.' reads the target alone."""
    from wise_plugin.evaluation import wild_answer, wild_exact_match

    model, tok = smollm2
    smollm2_hparams.answer_end, smollm2_hparams.answer_stop = ".", True
    edit = {"prompt": "Which college or university is related with Joe Hall Morris?", "target_new": "Harvard University",
            "subject": "Joe Hall Morris"}
    apply_wise_to_model(model, tok, [edit], smollm2_hparams)
    layer = find_layer(model)
    assert layer.book.memory == [(edit["prompt"], "Harvard University.")]
    assert greedy_answer(model, tok, edit["prompt"], max_new_tokens=4).startswith("Harvard University.")
    assert wild_exact_match(wild_answer(model, tok, edit["prompt"], edit["target_new"]), edit["target_new"])


@pytest.mark.host
def test_without_lifelong_the_host_undoes_each_edit(smollm2_hparams):
    editor = wise_plugin.load_editor(smollm2_hparams)
    before = logits(editor.model, editor.tok, EDITS[0]["prompt"])
    metrics, _, _ = editor.edit(prompts=EDITS[0]["prompt"], target_new=EDITS[0]["target_new"],
                                ground_truth=EDITS[0]["ground_truth"], verbose=False)
    assert metrics[0]["post"]["rewrite_acc"] == [1.0]  # scored by the host before it restored
    assert find_layer(editor.model) is None
    assert torch.equal(logits(editor.model, editor.tok, EDITS[0]["prompt"]), before)


def test_restore_handle_rolls_back_one_call_at_a_time(smollm2, smollm2_hparams):
    model, tok = smollm2
    pristine = logits(model, tok)
    _, first = apply_wise_to_model(model, tok, [request(0)], smollm2_hparams)
    after_first = find_layer(model).snapshot()
    _, second = apply_wise_to_model(model, tok, [request(1)], smollm2_hparams)
    layer = find_layer(model)
    assert layer.book.edits == 2
    second()  # the source-repo host calls the handle
    assert layer.book.edits == 1 and torch.equal(layer.side_weight, after_first["side_weight"])
    assert layer.book.threshold == after_first["threshold"]
    list(first.items())  # the package-index host iterates items()
    assert find_layer(model) is None
    assert torch.equal(logits(model, tok), pristine)


def test_real_edit_changes_only_masked_entries(smollm2, smollm2_hparams):
    model, tok = smollm2
    pristine = logits(model, tok)
    apply_wise_to_model(model, tok, [request(0)], smollm2_hparams)
    layer = find_layer(model)
    outside = ~layer.mask
    assert torch.equal(layer.side_weight.detach()[outside], layer.base.weight[outside])
    assert not torch.equal(layer.side_weight.detach()[layer.mask], layer.base.weight[layer.mask])
    assert torch.equal(logits(model, tok), pristine)  # an unrelated probe is routed to the main memory


def test_stop_token_prob_ends_the_edit_once_greedy_decoding_gives_the_target(smollm2, smollm2_hparams, caplog):
    model, tok = smollm2
    smollm2_hparams.n_iter, smollm2_hparams.stop_token_prob = 60, 0.5
    with caplog.at_level("INFO", logger="wise_plugin.wise"):
        apply_wise_to_model(model, tok, [request(1)], smollm2_hparams)
    iterations = int(re.search(r"(\d+) iterations", caplog.text).group(1))
    assert iterations < 60
    prompt, target = EDITS[1]["prompt"], EDITS[1]["target_new"]
    ids = tok(prompt + " " + target, return_tensors="pt")["input_ids"]
    start = len(tok(prompt)["input_ids"])
    with torch.no_grad():
        probs = model(input_ids=ids).logits[0, start - 1:-1].softmax(-1)
    assert probs.gather(-1, ids[0, start:, None]).min() >= 0.5  # every target token, routed as at inference
    assert target in greedy_answer(model, tok, prompt)


@pytest.mark.parametrize("field", ["prompt", "target_new"])
def test_empty_prompt_or_target_is_rejected_before_any_change(smollm2, smollm2_hparams, field):
    model, tok = smollm2
    bad = dict(request(0), **{field: "  "})
    with pytest.raises(ValueError, match=f"non-empty string '{field}'"):
        apply_wise_to_model(model, tok, [bad], smollm2_hparams)
    assert find_layer(model) is None


@pytest.mark.parametrize(
    "inner, message",
    [
        ("model.layers[99].mlp.down_proj.weight", r"'model.layers.99' does not exist in LlamaForCausalLM"),
        ("model.layers[3].mlp.gate.weight", r"'model.layers.3.mlp.gate' does not exist"),
        ("model.layers[3].input_layernorm.weight", r"is a LlamaRMSNorm; WISE edits an FFN projection"),
    ],
)
def test_inner_params_that_do_not_resolve(smollm2, smollm2_hparams, inner, message):
    model, tok = smollm2
    smollm2_hparams.inner_params = [inner]
    with pytest.raises(HParamsError, match=message):
        apply_wise_to_model(model, tok, [request(0)], smollm2_hparams)


@pytest.mark.host
def test_missing_model_folder(smollm2_hparams):
    smollm2_hparams.model_name = "./hugging_cache/llama-2-7b"
    with pytest.raises(HParamsError, match=r"model_name './hugging_cache/llama-2-7b' is not an existing folder"):
        wise_plugin.load_editor(smollm2_hparams)


def test_request_loc_prompt_joins_the_pool_rows(smollm2, smollm2_hparams):
    from wise_plugin.wise.main import _draw_loc, _loc_rows
    from wise_plugin.core.modules import upper_stack
    from wise_plugin.wise.model import projection_inputs

    model, tok = smollm2
    apply_wise_to_model(model, tok, [request(0)], smollm2_hparams)
    layer = find_layer(model)
    text = "nq question: who wrote the opera carmen Georges Bizet"
    lower = upper_stack(model, smollm2_hparams.inner_params[0]).lower  # MLPs skip padding: same inputs
    draw = _draw_loc(layer, tok, dict(request(1), loc_prompt=text), smollm2_hparams, None)
    acts, mask = _loc_rows(model, layer, tok, draw, lower)
    assert acts.shape[0] == smollm2_hparams.n_loc + 1
    own, own_mask = projection_inputs(model, layer, tok, [text])
    length = int(own_mask.sum())
    torch.testing.assert_close(acts[-1, :length], own[0, :length])
    assert int(mask[-1].sum()) == length


def test_generate_routes_the_prompt_once_and_keeps_its_memory(smollm2, smollm2_hparams):
    """With a KV cache the generated tokens keep the memory chosen on the prompt (whatever name the
    installed transformers gives the cache argument)."""
    model, tok = smollm2
    apply_wise_to_model(model, tok, [request(0)], smollm2_hparams)
    layer = find_layer(model)
    calls = []
    handle = layer.register_forward_hook(lambda *_: calls.append((layer.continuing, layer.cached_choice.tolist())))
    try:
        model.generate(**tok(EDITS[0]["prompt"], return_tensors="pt"), max_new_tokens=3, do_sample=False,
                       pad_token_id=tok.eos_token_id)
    finally:
        handle.remove()
    assert [continuing for continuing, _ in calls] == [False, True, True]
    assert calls[0][1] == [0] and all(choice == [0] for _, choice in calls)  # the edit's memory throughout


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_batch_rows_match_running_each_alone(smollm2, smollm2_hparams, side):
    model, tok = smollm2
    apply_wise_to_model(model, tok, [request(0)], smollm2_hparams)
    layer = find_layer(model)
    texts = [EDITS[0]["prompt"], "Hi", PROBE, EDITS[0]["prompt"] + " " + EDITS[0]["target_new"]]
    alone, routes = [], []
    with torch.no_grad():
        for text in texts:
            alone.append(model(**tok(text, return_tensors="pt")).logits[0])
            routes.append(bool(layer.cached_choice[0] >= 0))
        batch = tok(texts, return_tensors="pt", padding=True, padding_side=side)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        batched = model(**batch, position_ids=positions).logits
    assert routes[0] and not routes[1], "the edited prompt must use the side memory, a greeting must not"
    assert (layer.cached_choice >= 0).tolist() == routes
    for row, single in enumerate(alone):
        real = batch["attention_mask"][row].bool()
        torch.testing.assert_close(batched[row][real], single, atol=2e-4, rtol=1e-4)



@pytest.mark.host
def test_lifelong_evaluate_runs_the_runners_protocol_through_base_editor(smollm2_hparams):
    """Two demo edits through ``BaseEditor.edit``, scored after the second by the runner's
    ``score_stream``: the same record fields as a ``wise-plugin compare`` chunk."""
    from wise_plugin.demo import demo_requests
    from wise_plugin.evaluation import lifelong_evaluate

    smollm2_hparams.lifelong = True
    editor = wise_plugin.load_editor(smollm2_hparams)
    requests = demo_requests()[:2]
    with pytest.raises(ValueError, match="edited_before"):
        lifelong_evaluate(editor, requests, edited_before=2)
    result = lifelong_evaluate(editor, requests)
    assert find_layer(editor.model).book.edits == 2
    assert result["n"] == 2 and result["rewrite_acc"] == 1.0 and result["greedy_acc"] == 1.0
    assert {"rel", "pre_rel", "gen", "loc", "greedy", "gen_rel", "wild_rel"} <= set(result["records"][0])
    assert [r["index"] for r in result["records"]] == [0, 1]
    assert 0.0 <= result["locality"] <= 1.0 and result["edit_seconds_per_edit"] > 0
