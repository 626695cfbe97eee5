"""Faults and bad input: every failure leaves the model's weights and the checkpoint folder as they
were, and says what is wrong and how to fix it (checkpoints, edit calls, options, the runner's file)."""

from __future__ import annotations

import json
import re
import os
import random
import signal
import time

import pytest
import torch
import yaml

from conftest import HPARAMS_DIR, tiny_llama as tiny_model
import wise_plugin
from wise_plugin import LEMoEHyperParams, WISEHyperParams, apply_lemoe_to_model, apply_wise_to_model
from wise_plugin.core import checkpoint_files
from wise_plugin.core.checkpoint_files import CheckpointError
from wise_plugin.core.requests import EditRequestError
from wise_plugin.evaluation import apply_overrides, example_parser
from wise_plugin.hparams import HParamsError
from wise_plugin.lemoe import find_layer as find_lemoe
from wise_plugin.runner.store import ResultStore
from wise_plugin.wise import find_layer, load_checkpoint, save_checkpoint
from wise_plugin.wise import main as wise_main

FACTS = [("The capital of Australia is", "Melbourne"), ("The Eiffel Tower stands in", "Rome"),
         ("The author of Hamlet is", "Goethe"), ("Water boils at", "forty degrees"),
         ("The largest planet is", "Mars")]


def request(i: int) -> dict:
    prompt, target = FACTS[i]
    return {"prompt": prompt, "target_new": target, "ground_truth": "", "locality": {}, "portability": {}}


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state, cloned: the fault tests compare these bit for bit."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same_weights(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before), f"state keys changed: {sorted(set(after) ^ set(before))[:5]}"
    assert all(torch.equal(after[name], value) for name, value in before.items())


def fail_edit_at(monkeypatch, call: int) -> None:
    """Make the WISE trainer raise on its ``call``-th use from now on (the earlier ones run for real)."""
    real, calls = wise_main.train_edit, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError(f"injected failure in edit {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(wise_main, "train_edit", failing)


def files(folder) -> dict[str, bytes]:
    """Name -> bytes of every file in ``folder`` (empty when it does not exist)."""
    if not os.path.isdir(folder):
        return {}
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.fixture()
def hparams():
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml"))
    hparams.inner_params = ["model.layers[1].mlp.down_proj.weight"]
    hparams.n_iter, hparams.n_prefixes, hparams.save_freq, hparams.merge_freq = 3, 2, 2, 4
    hparams.lifelong = True
    return hparams


@pytest.fixture()
def saved(tok, hparams, tmp_path):
    """A folder holding the checkpoint of a tiny model after 3 edits, and that model."""
    model = tiny_model()
    for i in range(3):
        apply_wise_to_model(model, tok, [request(i)], hparams)
    folder = str(tmp_path / "ckpt")
    save_checkpoint(model, folder, hparams.inner_params[0])
    return folder, model


# -- checkpoints -------------------------------------------------------------------------------

def test_a_failed_load_leaves_the_model_alone_and_the_next_good_load_works(tok, hparams, saved, tmp_path):
    folder, edited = saved
    other = tiny_model(seed=1, hidden=48)  # another model: its checkpoint has other shapes
    apply_wise_to_model(other, tok, [request(0)], hparams)
    wrong = str(tmp_path / "wrong")
    save_checkpoint(other, wrong, hparams.inner_params[0])

    model = tiny_model()
    before, folder_before = weights(model), files(folder)
    hparams.load_path = hparams.save_path = wrong
    with pytest.raises(CheckpointError, match=r"side memory; this model's projection is \[32, 64\] \(another model\?\)"):
        apply_wise_to_model(model, tok, [request(3)], hparams)
    assert find_layer(model) is None
    assert_same_weights(model, before)
    hparams.load_path = hparams.save_path = folder  # the right one now loads, and the save keeps all edits
    apply_wise_to_model(model, tok, [request(3)], hparams)
    assert find_layer(model).book.edits == 4
    assert json.loads(files(folder)["wise_state.json"])["edits"] == 4
    assert files(folder) != folder_before


def test_same_shapes_other_weights_is_refused(tok, hparams, saved):
    folder, _ = saved
    model = tiny_model(seed=7)  # same architecture, other weights
    before = weights(model)
    with pytest.raises(CheckpointError, match="weights differ from this model's"):
        load_checkpoint(model, folder, hparams.inner_params[0])
    assert find_layer(model) is None and not hasattr(model, "save")
    assert_same_weights(model, before)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_crash_between_the_two_writes_keeps_the_previous_checkpoint(tok, hparams, saved, monkeypatch, fail_at):
    folder, model = saved
    before = files(folder)
    apply_wise_to_model(model, tok, [request(3)], hparams)  # a newer state to save
    real, calls = checkpoint_files.write_atomic, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == fail_at:  # 1: the tensors, 2: the JSON (the commit point)
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint_files, "write_atomic", failing)
    with pytest.raises(CheckpointError, match="No space left on device.*is unchanged"):
        save_checkpoint(model, folder, hparams.inner_params[0])
    monkeypatch.setattr(checkpoint_files, "write_atomic", real)
    after = files(folder)
    assert {k: v for k, v in after.items() if k in before} == before  # the old files are untouched
    fresh = tiny_model()
    load_checkpoint(fresh, folder, hparams.inner_params[0])
    assert find_layer(fresh).book.edits == 3
    save_checkpoint(model, folder, hparams.inner_params[0])  # the next save tidies what the crash left
    assert len([name for name in os.listdir(folder) if name.endswith(".safetensors")]) == 1


def test_an_exception_inside_the_save_of_an_edit_call_undoes_the_call(tok, hparams, saved, monkeypatch):
    folder, model = saved
    before, folder_before = weights(model), files(folder)
    hparams.save_path = folder

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_files, "write_atomic", full_disk)
    with pytest.raises(CheckpointError):
        apply_wise_to_model(model, tok, [request(3)], hparams)
    assert find_layer(model).book.edits == 3
    assert_same_weights(model, before)
    assert files(folder) == folder_before


@pytest.mark.parametrize("damage", ["tensors", "json", "json-empty", "tensor-file-gone"])
def test_damaged_folders_are_refused_without_touching_the_model(tok, hparams, saved, damage):
    folder, _ = saved
    meta = json.loads(files(folder)["wise_state.json"])
    tensor_path, json_path = os.path.join(folder, meta["tensor_file"]), os.path.join(folder, "wise_state.json")
    if damage == "tensors":
        data = open(tensor_path, "rb").read()
        open(tensor_path, "wb").write(data[: len(data) // 2])
    elif damage == "json":
        text = open(json_path).read()
        open(json_path, "w").write(text[: len(text) // 2])
    elif damage == "json-empty":
        open(json_path, "w").close()
    else:
        os.remove(tensor_path)
    damaged = files(folder)
    model = tiny_model()
    before = weights(model)
    with pytest.raises(CheckpointError, match="damaged|missing; the folder is incomplete"):
        load_checkpoint(model, folder, hparams.inner_params[0])
    assert find_layer(model) is None
    assert_same_weights(model, before)
    assert files(folder) == damaged


def test_version_1_folders_still_load(tok, hparams, saved):
    """Folders written before atomic saves: ``wise_state.safetensors`` beside the JSON, no digest."""
    folder, edited = saved
    meta = json.loads(files(folder)["wise_state.json"])
    os.rename(os.path.join(folder, meta.pop("tensor_file")), os.path.join(folder, "wise_state.safetensors"))
    meta.pop("sha256")
    meta["version"] = 1
    open(os.path.join(folder, "wise_state.json"), "w").write(json.dumps(meta))
    model = tiny_model()
    load_checkpoint(model, folder, hparams.inner_params[0])
    assert torch.equal(find_layer(model).side_weight, find_layer(edited).side_weight)


def test_kill_during_repeated_saves_never_leaves_a_folder_that_fails_to_load(tok, hparams, saved):
    """``kill -9`` of a process saving the same 3-edit state 20 times, at 10 different moments; after
    each kill the folder loads, and holds that state."""
    folder, model = saved
    reference = find_layer(model).side_weight.detach().clone()
    start = time.perf_counter()
    save_checkpoint(model, folder, hparams.inner_params[0])
    one_save = time.perf_counter() - start
    rng = random.Random(0)
    for round_ in range(10):
        pid = os.fork()
        if pid == 0:  # the child saves 20 times, then exits without running pytest's teardown
            try:
                for _ in range(20):
                    save_checkpoint(model, folder, hparams.inner_params[0])
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 20 * one_save))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        fresh = tiny_model()
        load_checkpoint(fresh, folder, hparams.inner_params[0])
        assert torch.equal(find_layer(fresh).side_weight, reference), f"round {round_}"


def test_lemoe_failed_load_leaves_no_adaptor(tok, tmp_path):
    hparams = LEMoEHyperParams.from_hparams("LEMoE/smollm2-135m")
    hparams.layer, hparams.inner_params = "model.layers[1].mlp", ["model.layers[1].mlp"]
    hparams.n_iter, hparams.router_iter, hparams.lifelong = 2, 2, True
    model = tiny_model()
    apply_lemoe_to_model(model, tok, [request(0)], hparams)
    hparams.save_path = str(tmp_path / "lemoe")
    apply_lemoe_to_model(model, tok, [request(1)], hparams)
    other = tiny_model(seed=3)  # same shapes, other embeddings
    before = weights(other)
    hparams.save_path, hparams.load_path = None, str(tmp_path / "lemoe")
    with pytest.raises(CheckpointError, match="input embeddings differ"):
        apply_lemoe_to_model(other, tok, [request(2)], hparams)
    assert find_lemoe(other) is None
    assert_same_weights(other, before)


# -- edit calls --------------------------------------------------------------------------------

def test_a_bad_request_in_a_list_is_refused_before_the_first_edit(tok, hparams):
    model = tiny_model()
    before = weights(model)
    bad = dict(request(1), target_new="   ")
    with pytest.raises(EditRequestError, match="edit request 1 needs a non-empty string 'target_new'"):
        apply_wise_to_model(model, tok, [request(0), bad], hparams)
    assert find_layer(model) is None
    assert_same_weights(model, before)


def test_a_failure_at_request_k_undoes_requests_before_it(tok, hparams, monkeypatch):
    model = tiny_model()
    apply_wise_to_model(model, tok, [request(0)], hparams)  # an earlier call's edit stays
    before = weights(model)
    fail_edit_at(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="injected"):
        apply_wise_to_model(model, tok, [request(1), request(2), request(3)], hparams)
    assert find_layer(model).book.edits == 1
    assert_same_weights(model, before)


def test_overlong_requests_are_refused_with_the_limit_named(tok, hparams):
    model = tiny_model()  # 256 positions
    long_prompt = "word " * 300
    with pytest.raises(EditRequestError, match=r"tokens .*the model's context is 256 tokens"):
        apply_wise_to_model(model, tok, [{"prompt": long_prompt, "target_new": "x"}], hparams)
    hparams.max_request_tokens = 4
    length = len(tok("Water boils at forty degrees")["input_ids"])  # 5 or 6: whether the tokenizer adds BOS varies by release
    with pytest.raises(EditRequestError, match=rf"edit request 0 is {length} tokens.*max_request_tokens is 4.*raise max_request_tokens"):
        apply_wise_to_model(model, tok, [request(3), request(1)], hparams)
    assert find_layer(model) is None


# -- options -----------------------------------------------------------------------------------

BAD_WISE = [
    ("act_ratio", 0, "act_ratio is 0; it must be in (0, 1]"),
    ("act_ratio", -1, "act_ratio is -1; it must be in (0, 1]"),
    ("norm_constraint", -1, "norm_constraint is -1; it must be > 0"),
    ("lifelong", "false", "lifelong is 'false' (str); it must be true or false (write it without quotes)"),
    ("edit_lr", "abc", "edit_lr is 'abc' (str); it must be a number"),
    ("n_iter", 2.5, "n_iter is 2.5 (float); it must be a whole number"),
    ("n_loc", "64", "n_loc is '64' (str); it must be a whole number (write it without quotes)"),
    ("seed", "x", "seed is 'x' (str); it must be a whole number"),
    ("mask_ratio", 1.5, "mask_ratio must be in (0, 1]"),
    ("inner_params", ["model.layers[1].self_attn.q_proj.weight"], "'q_proj', which is not an FFN output projection"),
    ("inner_params", ["model.layers[1].mlp.up_proj.weight"], "'up_proj', which is not an FFN output projection"),
    ("loc_pool", "/nonexistent/pool.json", "loc_pool file not found"),
]


@pytest.mark.parametrize("key, value, message", BAD_WISE)
def test_bad_wise_options_are_refused_on_every_path(tok, tmp_path, key, value, message):
    config = yaml.safe_load(open(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml")))
    config[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))  # strings that read as numbers or booleans are quoted
    with pytest.raises(HParamsError, match=f"invalid WISE hparams: .*{_escape(message)}"):
        WISEHyperParams.from_hparams(str(path))

    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml"))
    hparams.inner_params = ["model.layers[1].mlp.down_proj.weight"]
    setattr(hparams, key, value)  # assigned after loading: checked when the editor starts
    model = tiny_model()
    before = weights(model)
    with pytest.raises(HParamsError, match=_escape(message)):
        apply_wise_to_model(model, tok, [request(0)], hparams)
    assert find_layer(model) is None
    assert_same_weights(model, before)

    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml"))
    parser = example_parser("test", "WISE/smollm2-135m", "", "", 1)
    with pytest.raises(SystemExit) as stop:
        apply_overrides(hparams, [f"{key}={json.dumps(value)}"], parser)
    assert stop.value.code == 2


def _escape(text: str) -> str:
    return re.escape(text)


def test_upstream_style_numbers_still_load(tmp_path):
    """``edit_lr: 1e-4`` unquoted is a number (as in upstream files); quoted it is a string and refused."""
    config = yaml.safe_load(open(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml")))
    text = yaml.safe_dump({k: v for k, v in config.items() if k != "edit_lr"})
    (tmp_path / "ok.yaml").write_text(text + "edit_lr: 1e-4\n")
    assert WISEHyperParams.from_hparams(str(tmp_path / "ok.yaml")).edit_lr == 1e-4
    (tmp_path / "bad.yaml").write_text(text + "edit_lr: '1e-4'\n")
    with pytest.raises(HParamsError, match="edit_lr is '1e-4'"):
        WISEHyperParams.from_hparams(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("key, value, message", [
    ("gate", "false", "gate is 'false' (str); it must be true or false"),
    ("layer", "model.layers[17].mlp.down_proj", "names 'down_proj', a single projection"),
    ("layer", "model.layers[17].mlp.down_proj.weight", "names a parameter"),
    ("rank", 8.0, "rank is 8.0 (float); it must be a whole number"),
])
def test_bad_lemoe_options_are_refused(tmp_path, key, value, message):
    config = yaml.safe_load(open(os.path.join(HPARAMS_DIR, "..", "LEMoE", "smollm2-135m.yaml")))
    config[key] = value
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(HParamsError, match=_escape(message)):
        LEMoEHyperParams.from_hparams(str(tmp_path / "bad.yaml"))


def test_lemoe_layer_that_is_not_a_block_is_refused_at_attach(tok):
    hparams = LEMoEHyperParams.from_hparams("LEMoE/smollm2-135m")
    hparams.layer = "model.layers[1].mlp.act_fn"  # passes the name check, but is a single activation
    model = tiny_model()
    before = weights(model)
    with pytest.raises(HParamsError, match="is a SiLUActivation without weights; name the block.s FFN"):
        apply_lemoe_to_model(model, tok, [request(0)], hparams)
    assert find_lemoe(model) is None
    assert_same_weights(model, before)


# -- the runner's results file ------------------------------------------------------------------

def test_a_cut_last_line_of_chunks_jsonl_is_repaired_before_appending(tmp_path):
    path = tmp_path / "chunks.jsonl"
    good = {"key": "a", "records": []}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"key": "b", "records": [1, 2]})[:17])
    store = ResultStore(str(tmp_path))
    assert "a" in store and "b" not in store
    store.add({"key": "b", "records": [1, 2]})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["a", "b"]
    assert "b" in ResultStore(str(tmp_path))



# -- through the host's BaseEditor (both hosts) -------------------------------------------------

@pytest.fixture(scope="module")
def host_editor(smollm2_path):
    """One BaseEditor for the host tests: each test leaves it unedited, which is what they check."""
    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml"))
    hparams.lifelong, hparams.n_iter, hparams.n_loc, hparams.n_prefixes = True, 3, 16, 2
    editor = wise_plugin.load_editor(hparams)
    return editor, weights(editor.model)


BAD_CALLS = [
    ({"prompts": "", "target_new": "Rome"}, "needs a non-empty string 'prompt'"),
    ({"prompts": "The capital of France is", "target_new": None}, "target_new is missing"),
    ({"prompts": ["The capital of France is", "The capital of Spain is"], "target_new": ["Rome"]},
     "target_new has 1 entries but there are 2 prompts"),
    ({"prompts": [], "target_new": []}, "prompts is an empty list"),
    ({"prompts": ["The capital of France is", "The capital of Spain is"], "target_new": ["Rome", "   "]},
     "edit request 1 needs a non-empty string 'target_new'"),
    ({"prompts": "word " * 5000, "target_new": "Rome"}, "max_request_tokens is 1024"),
]


@pytest.mark.host
@pytest.mark.parametrize("kwargs, message", BAD_CALLS)
def test_bad_base_editor_calls_are_refused_before_the_host_runs(host_editor, kwargs, message):
    editor, before = host_editor
    with pytest.raises(EditRequestError, match=_escape(message)):
        editor.edit(verbose=False, **kwargs)
    assert find_layer(editor.model) is None
    assert_same_weights(editor.model, before)


@pytest.mark.host
def test_a_base_editor_call_is_all_or_nothing(host_editor, monkeypatch, tmp_path):
    """A failure while the host edits request 2 of a list undoes request 1, and the save_path folder
    (holding a checkpoint of an earlier call) keeps its files; a call that succeeds saves once."""
    editor, before = host_editor
    folder = str(tmp_path / "state")
    editor.hparams.save_path = folder
    try:
        editor.edit(prompts=[FACTS[4][0]], target_new=[FACTS[4][1]], verbose=False)
        assert json.loads(files(folder)["wise_state.json"])["edits"] == 1
        after_first, folder_before = weights(editor.model), files(folder)
        fail_edit_at(monkeypatch, 2)
        with pytest.raises(RuntimeError, match="injected"):
            editor.edit(prompts=[FACTS[0][0], FACTS[1][0]], target_new=[FACTS[0][1], FACTS[1][1]], verbose=False)
        assert find_layer(editor.model).book.edits == 1
        assert_same_weights(editor.model, after_first)
        assert files(folder) == folder_before
        assert editor.hparams.save_path == folder
    finally:
        editor.hparams.save_path = None
        wise_plugin.wise.detach(editor.model)
    assert_same_weights(editor.model, before)


@pytest.mark.host
def test_base_editor_refuses_a_missing_model_folder_with_a_message():
    from wise_plugin.host import base_editor

    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml"))
    hparams.model_name = "/nonexistent/model"
    with pytest.raises(HParamsError, match="model_name '/nonexistent/model' is not an existing folder"):
        base_editor().from_hparams(hparams)


def test_a_fingerprint_reads_weights_larger_than_float32_counts_exactly():
    """SmolLM2's embedding has 28,311,552 entries: a float32 position of its last entry rounds past
    the end. Saving a LEMoE checkpoint of SmolLM2 (the runner's --checkpoint-every) failed there."""
    weight = torch.arange(28_311_552, dtype=torch.float32).reshape(49152, 576)
    fingerprint = checkpoint_files.weight_fingerprint(weight)
    assert fingerprint.shape == (257,) and fingerprint[255] == weight.reshape(-1)[-1]
    assert checkpoint_files.same_weights(fingerprint, checkpoint_files.weight_fingerprint(weight.clone()))
