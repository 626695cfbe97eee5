"""The source-repository EasyEdit as host, for real: registration, BaseEditor, its evaluation path,
restore handles, checkpoints and the runner, editing the embedded SmolLM2.

These tests need the source host (``make test-source``: ``.venv-source`` with the host's pins and
``WISE_PLUGIN_EASYEDIT`` naming the clone); elsewhere conftest deselects them.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

import wise_plugin
from conftest import ROOT
from wise_plugin.host import alg_dict
from wise_plugin.lemoe import LEMoEHyperParams
from wise_plugin.lemoe import find_layer as find_lemoe
from wise_plugin.wise import find_layer

pytestmark = [pytest.mark.source_host, pytest.mark.host, pytest.mark.slow]

WISE_YAML = os.path.join(ROOT, "hparams", "WISE", "smollm2-135m.yaml")
LEMOE_YAML = os.path.join(ROOT, "hparams", "LEMoE", "smollm2-135m.yaml")
EDITS = [
    ("The capital of Australia is", "Melbourne", "Canberra", "Australia's capital city is"),
    ("The Mona Lisa was painted by", "Michelangelo", "Leonardo da Vinci", "The painter of the Mona Lisa was"),
]
NEIGHBOUR = ("The capital of Canada is", "Ottawa")


def edit_kwargs(n: int = 2) -> dict:
    edits = EDITS[:n]
    return dict(prompts=[e[0] for e in edits], target_new=[e[1] for e in edits],
                ground_truth=[e[2] for e in edits], rephrase_prompts=[e[3] for e in edits],
                locality_inputs={"neighborhood": {"prompt": [NEIGHBOUR[0]] * n, "ground_truth": [NEIGHBOUR[1]] * n}},
                verbose=False)


def logits(model, tok, text: str = NEIGHBOUR[0]) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_plugin_editors_are_registered_and_the_hosts_wise_stays_reachable():
    import easyeditor.editors.editor as editor_module
    from easyeditor.models.wise.wise_main import apply_wise_to_model as host_wise

    table = alg_dict()
    assert editor_module.ALG_DICT is table
    assert table["WISE"] is wise_plugin.apply_wise_to_model and table["LEMoE"] is wise_plugin.apply_lemoe_to_model
    assert table["WISE-upstream"] is host_wise
    assert "GRACE" in table


def test_the_runner_finds_any_host_editors_hyper_parameter_class():
    from wise_plugin.runner.editors import _host_hparams_class

    assert _host_hparams_class("GRACE") == "easyeditor:GraceHyperParams"
    assert _host_hparams_class("WISE-upstream") == "easyeditor:WISEHyperParams"
    assert _host_hparams_class("DEFER") == "easyeditor:DeferHyperParams"
    assert _host_hparams_class("WISE") is None  # ours: the plugin's own class, from the table


def test_sequential_edit_evaluation_checkpoint_and_generation(smollm2_hparams, tmp_path, monkeypatch):
    """edit(sequential_edit=True) with loc_prompts: the host scores each edit with its own
    compute_edit_quality, summarises, and ends with edited_model.save(save_path); the checkpoint
    then continues in a new editor; WILD-style generation (stop strings, no KV cache) keeps the edit."""
    from easyeditor import BaseEditor, compute_edit_quality

    monkeypatch.chdir(tmp_path)  # the host's summary_metrics writes ./logs/results.json
    seen: list[dict] = []

    def recording_wise(model, tok, requests, hparams, **kwargs):
        seen.extend(requests)
        return wise_plugin.apply_wise_to_model(model, tok, requests, hparams, **kwargs)

    monkeypatch.setitem(alg_dict(), "WISE", recording_wise)
    smollm2_hparams.save_path = str(tmp_path / "ckpt")
    editor = BaseEditor.from_hparams(smollm2_hparams)
    metrics, edited, handle = editor.edit(**edit_kwargs(), loc_prompts=["Water boils at 100 degrees Celsius."],
                                          sequential_edit=True)
    assert [r["loc_prompt"] for r in seen] == ["Water boils at 100 degrees Celsius."] * 2
    assert edited is editor.model and find_layer(editor.model).book.edits == 2
    assert all(m["post"]["rewrite_acc"] == [1.0] for m in metrics)
    assert all("neighborhood_acc" in m["post"]["locality"] for m in metrics)
    summary = json.loads((tmp_path / "logs" / "results.json").read_text())
    assert len(summary) == 2
    assert callable(handle) and isinstance(handle, dict)

    request = seen[0]
    scores = compute_edit_quality(editor.model, editor.model_name, editor.hparams, editor.tok, request, "cpu")
    assert float(np.mean(scores["rewrite_acc"])) == 1.0  # the first edit holds after the second

    tok = editor.tok
    encoded = tok(EDITS[1][0], return_tensors="pt")
    out = editor.model.generate(**encoded, max_new_tokens=8, do_sample=False, stop_strings=[".", "\n", tok.eos_token],
                                tokenizer=tok, use_cache=False, pad_token_id=tok.eos_token_id)
    assert "Michelangelo" in tok.decode(out[0, encoded["input_ids"].shape[1]:])

    monkeypatch.setitem(alg_dict(), "WISE", wise_plugin.apply_wise_to_model)
    resumed = wise_plugin.WISEHyperParams.from_hparams(WISE_YAML)
    resumed.load_path, resumed.lifelong = str(tmp_path / "ckpt"), True
    editor2 = BaseEditor.from_hparams(resumed)
    editor2.edit(prompts="The Eiffel Tower is located in", target_new="Rome", sequential_edit=True, verbose=False)
    layer = find_layer(editor2.model)
    assert layer.book.edits == 3 and [p for p, _ in layer.book.memory][:2] == [e[0] for e in EDITS]


def test_without_sequential_edit_the_host_calls_the_restore_handle(smollm2_hparams, tmp_path, monkeypatch):
    from easyeditor import BaseEditor

    monkeypatch.chdir(tmp_path)
    editor = BaseEditor.from_hparams(smollm2_hparams)
    before = logits(editor.model, editor.tok, EDITS[0][0])
    metrics, _, _ = editor.edit(**edit_kwargs(1))
    assert metrics[0]["post"]["rewrite_acc"] == [1.0]  # scored before the host restored
    assert find_layer(editor.model) is None
    assert torch.equal(logits(editor.model, editor.tok, EDITS[0][0]), before)


def test_lemoe_through_the_source_host(tmp_path, monkeypatch):
    """LEMoE is not in the host's callable-restore list: without sequential_edit the host iterates
    the handle's items(), which undoes the edit; with it the expert stays."""
    from easyeditor import BaseEditor

    monkeypatch.chdir(tmp_path)
    hparams = LEMoEHyperParams.from_hparams(LEMOE_YAML)
    editor = BaseEditor.from_hparams(hparams)
    before = logits(editor.model, editor.tok, EDITS[0][0])
    editor.edit(**edit_kwargs(1))
    assert find_lemoe(editor.model) is None
    assert torch.equal(logits(editor.model, editor.tok, EDITS[0][0]), before)
    metrics, _, _ = editor.edit(**edit_kwargs(1), sequential_edit=True)
    assert metrics[0]["post"]["rewrite_acc"] == [1.0]
    assert find_lemoe(editor.model) is not None


def test_batch_edit_of_a_single_edit_method_is_refused_before_any_change(smollm2_hparams, tmp_path, monkeypatch):
    """The host's batch_edit accepts only its batchable methods (WISE, like its own WISE, is not):
    it refuses before anything is edited; edit(..., sequential_edit=True) is the way."""
    from easyeditor import BaseEditor

    monkeypatch.chdir(tmp_path)
    editor = BaseEditor.from_hparams(smollm2_hparams)
    before = logits(editor.model, editor.tok)
    with pytest.raises(AssertionError, match="can not batch edit"):
        editor.batch_edit(**edit_kwargs())
    assert find_layer(editor.model) is None and torch.equal(logits(editor.model, editor.tok), before)


def _yaml(path, source: dict) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(source, handle)
    return str(path)


def test_runner_compares_our_wise_with_the_hosts_wise_and_grace(tmp_path):
    """One comparison on the source host: ours, the host's WISE (alg_name WISE-upstream) and GRACE,
    each YAML shortened to a few iterations, on two built-in edits."""
    from wise_plugin.runner import RunOptions, load_requests, load_specs, run_comparison
    from wise_plugin.runner.datasets import dataset_format

    def shortened(name: str, **changes) -> str:
        with open(os.path.join(ROOT, "hparams", name, "smollm2-135m.yaml"), encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
        return _yaml(tmp_path / f"{name}.yaml", {**config, **changes})

    specs = load_specs([shortened("WISE", n_iter=3), shortened("WISE-upstream", n_iter=2),
                        shortened("GRACE", n_iter=2)])
    assert [s.alg_name for s in specs] == ["WISE", "WISE-upstream", "GRACE"]
    result = run_comparison(specs, load_requests("builtin"), dataset_format("builtin"),
                            RunOptions(t_values=(2,), n=2, progress=False), str(tmp_path / "out"))
    rows = {row["editor"]: row for row in result["summary"]}
    assert set(rows) == {"WISE", "WISE-upstream", "GRACE"}
    for row in rows.values():
        assert row["edits"] == 2 and 0.0 <= row["rel"] <= 1.0 and 0.0 <= row["loc"] <= 1.0
        assert row["wild_rel"] is not None and row["wild_gen"] is not None
