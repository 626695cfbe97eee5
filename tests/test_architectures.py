"""Each shipped YAML drives one real WISE edit on a tiny random model of its architecture.

The tiny model is built from the architecture's config class with enough blocks for the YAML's
layer index plus one above it, so the edit goes through exactly the module path the YAML names and the
fast path runs a block above the edited one. The fast path
(cached lower blocks) and the reference path (every row through the full model every iteration)
must agree.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPTJConfig, LlamaConfig, MistralConfig,
                          Qwen2Config)

from conftest import HPARAMS_DIR
from wise_plugin import WISEHyperParams, apply_wise_to_model
from wise_plugin.wise import SetupCache, detach, find_layer
from wise_plugin.wise import main as wise_main
from wise_plugin.core.rows import build_batch
from wise_plugin.core.modules import module_path, upper_stack
from wise_plugin.wise.trainer import _LocRows, _UpperForward

VOCAB = 49152  # the SmolLM2 tokenizer is used for every tiny model


def tiny_config(name: str, layers: int):
    decoder = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if name in ("llama-2-7b", "llama3-8b"):
        return LlamaConfig(**decoder)
    if name == "mistral-7b":
        return MistralConfig(**decoder)
    if name == "qwen2.5-7b":
        return Qwen2Config(**decoder)
    if name == "gpt-j-6b":
        return GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, rotary_dim=4, n_positions=256)
    if name == "gpt2-xl":
        return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=256)
    raise AssertionError(f"no tiny config for {name}")


ARCHITECTURES = ["llama-2-7b", "mistral-7b", "gpt-j-6b", "llama3-8b", "qwen2.5-7b", "gpt2-xl"]
REQUEST = {"prompt": "The capital of Australia is", "target_new": "Melbourne", "ground_truth": "Canberra",
           "locality": {}, "portability": {}}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_edit_through_the_yaml_module_path(name, tok):
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, f"{name}.yaml"))
    hparams.n_iter, hparams.n_prefixes, hparams.use_chat_template = 4, 2, False
    path = module_path(hparams.inner_params[0])
    index = int(next(p for p in path if p.isdigit()))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(name, index + 2)).eval()  # one block above the edit
    reference_model = copy.deepcopy(model)
    stack = upper_stack(model, hparams.inner_params[0])
    assert stack is not None, "fast path must cover this architecture"

    edited, handle = apply_wise_to_model(model, tok, [dict(REQUEST)], hparams)
    layer = find_layer(edited)
    assert layer is not None and layer.book.edits == 1 and layer.book.threshold is not None
    target = edited
    for part in path:
        target = target[int(part)] if part.isdigit() else getattr(target, part)
    assert target is layer, "the side memory must sit at the YAML's module path"
    changed = layer.side_weight.detach() != layer.base.weight
    assert changed.any() and not changed[~layer.mask].any()

    batch = tok(["The capital of Australia is Melbourne", "Hi"], return_tensors="pt", padding=True)
    assert edited(**batch).logits.shape[:2] == batch["input_ids"].shape

    batch_rows = build_batch(tok, REQUEST["prompt"], REQUEST["target_new"], [], False, torch.device("cpu"))
    no_loc = _LocRows(layer.caches.pool_acts[:0], layer.caches.pool_mask[:0])
    assert _UpperForward(edited, layer, stack, batch_rows, no_loc).additive, "edited block must split as rest + projection"

    hparams.fast_path = False
    apply_wise_to_model(reference_model, tok, [dict(REQUEST)], hparams)
    torch.testing.assert_close(find_layer(reference_model).side_weight, layer.side_weight, rtol=1e-4, atol=1e-5)
    assert find_layer(reference_model).book.threshold == pytest.approx(layer.book.threshold, rel=1e-4)

    handle()
    assert find_layer(edited) is None


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_rehearsed_rows_from_the_cache_match_the_reference_path(name, tok):
    """Later edits replay earlier ones; the fast path takes their hidden states from its cache."""
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, f"{name}.yaml"))
    hparams.n_iter, hparams.n_prefixes, hparams.use_chat_template, hparams.rehearse = 4, 2, False, 2
    hparams.lifelong = True
    index = int(next(p for p in module_path(hparams.inner_params[0]) if p.isdigit()))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(name, index + 2)).eval()
    reference_model = copy.deepcopy(model)
    requests = [dict(REQUEST), dict(REQUEST, prompt="The Eiffel Tower is in", target_new="Rome"),
                dict(REQUEST, prompt="Water boils at a temperature of", target_new="50 degrees")]
    for request in requests:
        apply_wise_to_model(model, tok, [request], hparams)
    layer = find_layer(model)
    assert layer.caches.kwargs_shared and len(layer.caches.block_inputs) == 3
    hparams.fast_path = False
    for request in requests:
        apply_wise_to_model(reference_model, tok, [request], hparams)
    torch.testing.assert_close(find_layer(reference_model).side_weight, layer.side_weight, rtol=1e-4, atol=1e-5)


def test_layout_unknown_to_the_fast_path_runs_the_full_model(tok, monkeypatch, caplog):
    """Without a recognised block layout an edit runs the whole model on its rows every iteration,
    scores the irrelevant rows from their cached inputs, and ends where the fast path ends."""
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "llama-2-7b.yaml"))
    hparams.inner_params = ["model.layers[1].mlp.down_proj.weight"]
    hparams.n_iter, hparams.n_prefixes, hparams.use_chat_template = 4, 2, False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama-2-7b", 3)).eval()
    fallback_model = copy.deepcopy(model)
    apply_wise_to_model(model, tok, [dict(REQUEST)], hparams)
    monkeypatch.setattr(wise_main, "upper_stack", lambda *args: None)
    with caplog.at_level("WARNING", logger="wise_plugin.wise"):
        apply_wise_to_model(fallback_model, tok, [dict(REQUEST)], hparams)
    assert "fast path unavailable for LlamaForCausalLM" in caplog.text
    torch.testing.assert_close(find_layer(fallback_model).side_weight, find_layer(model).side_weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_keeps_its_dtype(tok, dtype):
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "llama-2-7b.yaml"))
    hparams.inner_params = ["model.layers[1].mlp.down_proj.weight"]
    hparams.n_iter, hparams.n_prefixes, hparams.use_chat_template = 4, 2, False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama-2-7b", 2)).eval().to(dtype)
    edited, _ = apply_wise_to_model(model, tok, [dict(REQUEST)], hparams)
    layer = find_layer(edited)
    assert layer.side_weight.dtype == dtype and layer.side_base.dtype == dtype
    assert layer.book.threshold is not None and torch.isfinite(torch.tensor(layer.book.threshold))
    changed = layer.side_weight.detach() != layer.base.weight
    assert changed.any() and not changed[~layer.mask].any()
    batch = tok(["The capital of Australia is Melbourne", "Hi"], return_tensors="pt", padding=True)
    assert edited(**batch).logits.dtype == dtype


def test_setup_is_reused_only_for_a_model_with_the_same_weights(tok, monkeypatch):
    """A rebuilt unedited model reuses prefixes and pool inputs (same edit); changed weights do not."""
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "llama-2-7b.yaml"))
    hparams.inner_params = ["model.layers[1].mlp.down_proj.weight"]
    hparams.n_iter, hparams.n_prefixes, hparams.use_chat_template = 4, 2, False
    torch.manual_seed(0)
    pristine = AutoModelForCausalLM.from_config(tiny_config("llama-2-7b", 2)).eval()
    generated = []
    real = wise_main.generate_prefixes
    monkeypatch.setattr(wise_main, "generate_prefixes", lambda *a, **k: generated.append(1) or real(*a, **k))

    cache = SetupCache()
    first, _ = apply_wise_to_model(copy.deepcopy(pristine), tok, [dict(REQUEST)], hparams, setup_cache=cache)
    again, _ = apply_wise_to_model(copy.deepcopy(pristine), tok, [dict(REQUEST)], hparams, setup_cache=cache)
    assert len(generated) == 1, "the second model with the same weights must reuse the setup"
    assert find_layer(again).caches.prefixes == find_layer(first).caches.prefixes
    torch.testing.assert_close(find_layer(again).side_weight, find_layer(first).side_weight, rtol=0, atol=0)

    changed = copy.deepcopy(pristine)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight[0, 0] += 0.5
    apply_wise_to_model(changed, tok, [dict(REQUEST)], hparams, setup_cache=cache)
    assert len(generated) == 2, "a model with other weights must compute its own setup"
    alone = copy.deepcopy(pristine)
    apply_wise_to_model(alone, tok, [dict(REQUEST)], hparams)
    assert len(generated) == 3, "without a cache held by the caller nothing is shared between models"
    detach(alone)  # as a host does after each edit without lifelong: the model keeps its setup
    apply_wise_to_model(alone, tok, [dict(REQUEST)], hparams)
    assert len(generated) == 3, "the same model must not redo its setup after its side memory was detached"
