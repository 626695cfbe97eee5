"""Every shipped YAML and an upstream-style YAML load; bad files raise messages that say what to fix."""

from __future__ import annotations

import glob
import os
import textwrap

import pytest

from conftest import HPARAMS_DIR
from wise_plugin import WISEHyperParams
from wise_plugin.hparams import HParamsError

# The key set of upstream EasyEdit's hparams/WISE/llama-7b.yaml, values as upstream writes them.
UPSTREAM_LLAMA = """
alg_name: "WISE"
model_name: "./hugging_cache/llama-2-7b"
device: 1

mask_ratio: 0.2
edit_lr: 1.0
n_iter: 70
norm_constraint: 1.0
act_margin: [5.0, 20.0, 10.0] # alpha, beta, gamma
act_ratio: 0.88
save_freq: 500
merge_freq: 1000
merge_alg: 'ties'
objective_optimization: 'only_label'
inner_params:
- model.layers[27].mlp.down_proj.weight

## alternative: WISE-Merge, WISE-Retrieve

# for merge (if merge)
densities: 0.53
weights: 1.0

# for retrieve (if retrieve, pls set to True)
retrieve: True
replay: False # True --> will replay the past editing instances: see https://arxiv.org/abs/2405.14768 Appendix B.3

model_parallel: False
use_chat_template: True
save_path: "./wise_checkpoint/wise.pt"
load_path: "./wise_checkpoint/wise.pt"
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "h.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(HPARAMS_DIR, "*.yaml"))), ids=os.path.basename)
def test_shipped_yaml_loads(path):
    hparams = WISEHyperParams.from_hparams(path)
    assert hparams.alg_name == "WISE"
    assert hparams.inner_params[0].endswith(".weight")
    assert hparams.merge_freq % hparams.save_freq == 0
    assert (hparams.alpha, hparams.beta, hparams.gamma) == tuple(hparams.act_margin)


def test_upstream_yaml_loads_unchanged(tmp_path):
    hparams = WISEHyperParams.from_hparams(write(tmp_path, UPSTREAM_LLAMA))
    assert hparams.model_name == "./hugging_cache/llama-2-7b"
    assert hparams.device == 1 and hparams.retrieve is True and hparams.use_chat_template is True
    assert hparams.save_path == "./wise_checkpoint/wise.pt"
    assert hparams.inner_params == ["model.layers[27].mlp.down_proj.weight"]


def test_path_without_suffix_gets_yaml(tmp_path):
    path = write(tmp_path, UPSTREAM_LLAMA)
    assert WISEHyperParams.from_hparams(path[: -len(".yaml")]).n_iter == 70


def test_unknown_key_names_key_and_suggestion(tmp_path):
    bad = UPSTREAM_LLAMA.replace("edit_lr: 1.0", "edit_lrr: 1.0")
    with pytest.raises(HParamsError, match=r"unknown key\(s\) 'edit_lrr' \(did you mean 'edit_lr'\?\)"):
        WISEHyperParams.from_hparams(write(tmp_path, bad))


def test_missing_required_key(tmp_path):
    bad = UPSTREAM_LLAMA.replace("inner_params:\n- model.layers[27].mlp.down_proj.weight\n", "")
    with pytest.raises(HParamsError, match=r"missing required key\(s\) inner_params"):
        WISEHyperParams.from_hparams(write(tmp_path, bad))


def test_wrong_alg_name(tmp_path):
    with pytest.raises(HParamsError, match=r"alg_name is 'ROME', but WISEHyperParams needs alg_name: WISE"):
        WISEHyperParams.from_hparams(write(tmp_path, UPSTREAM_LLAMA.replace('"WISE"', '"ROME"')))


def test_missing_file():
    with pytest.raises(HParamsError, match=r"hparams file not found: '/no/such/file.yaml'"):
        WISEHyperParams.from_hparams("/no/such/file.yaml")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("act_margin: [5.0, 20.0, 10.0]", "act_margin: [5.0, 20.0]", r"act_margin must be \[alpha, beta, gamma\]"),
        ("save_freq: 500", "save_freq: 300", r"merge_freq \(1000\) must be a positive multiple of save_freq \(300\)"),
        ("mask_ratio: 0.2", "mask_ratio: 1.5", r"mask_ratio must be in \(0, 1\]"),
        ("merge_alg: 'ties'", "merge_alg: 'slerp'", r"merge_alg 'slerp' is not supported"),
        ("merge_alg: 'ties'", "merge_alg: 'ties'\nroute_by: 'margin'", r"route_by 'margin' is not supported; use one of"),
        ("merge_alg: 'ties'", "merge_alg: 'ties'\nstop_token_prob: 1.0", r"stop_token_prob must be in \(0, 1\) or null"),
        ("- model.layers[27].mlp.down_proj.weight", "- model.layers[27].mlp.down_proj", r"is not a weight path"),
        ("merge_alg: 'ties'", "merge_alg: 'ties'\nmemory_rank: 0", r"memory_rank must be a whole number >= 1 or null"),
        ("merge_alg: 'ties'", "merge_alg: 'ties'\nmemory_rank: 6.5", r"memory_rank is 6.5 \(float\); it must be a whole number"),
    ],
)
def test_invalid_values(tmp_path, old, new, message):
    with pytest.raises(HParamsError, match=message):
        WISEHyperParams.from_hparams(write(tmp_path, UPSTREAM_LLAMA.replace(old, new)))


def test_unknown_embedded_model(tmp_path):
    bad = UPSTREAM_LLAMA.replace('"./hugging_cache/llama-2-7b"', '"embedded:gpt-5"')
    with pytest.raises(HParamsError, match=r"unknown embedded model 'gpt-5'"):
        WISEHyperParams.from_hparams(write(tmp_path, bad))


def test_loc_pool_reads_zsre_records_and_the_builtin_pool():
    from conftest import ZSRE_TRAIN
    from wise_plugin.core.rows import load_loc_pool

    zsre = load_loc_pool(ZSRE_TRAIN)
    assert len(zsre) == 200 and all(text.startswith("nq question:") for text in zsre)
    builtin = load_loc_pool("builtin")
    assert len(builtin) >= 200 and len(set(builtin)) == len(builtin)


def test_loc_pool_missing_file():
    from wise_plugin.core.rows import load_loc_pool

    with pytest.raises(HParamsError, match=r"loc_pool file not found: 'nowhere.json'"):
        load_loc_pool("nowhere.json")


def test_shipped_recipes_are_found_by_name_outside_a_checkout(tmp_path, monkeypatch):
    """The CLI and demo name their default YAMLs; that must work from any folder (an installed wheel)."""
    from wise_plugin.hparams import RECIPES, find_hparams, shipped_recipes

    monkeypatch.chdir(tmp_path)  # no hparams/ folder here
    path = find_hparams("WISE/smollm2-135m")
    assert os.path.commonpath([path, RECIPES]) == RECIPES and path.endswith("smollm2-135m.yaml")
    assert find_hparams("hparams/WISE/smollm2-135m.yaml") == path
    assert WISEHyperParams.from_hparams("WISE/smollm2-135m").alg_name == "WISE"
    assert {"WISE/smollm2-135m", "LEMoE/smollm2-135m-gate", "FT/smollm2-135m"} <= set(shipped_recipes())
    with pytest.raises(HParamsError, match="WISE/smollm2-135m"):  # the error lists what is shipped
        find_hparams("WISE/no-such-model")


def test_dense_recipe_is_the_shipped_one_with_seven_values_changed():
    """README and docs/results.md describe the dense YAML as the shipped one with a full mask, a
    larger step, a stricter stop, subject statements, low-rank retired memories, the answer stop
    and closed answers; any other difference would make those comparisons untrue."""
    shipped = vars(WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml")))
    dense = vars(WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m-dense.yaml")))
    changed = {key: (shipped[key], dense[key]) for key in shipped if shipped[key] != dense[key]}
    assert changed == {"mask_ratio": (0.2, 1.0), "edit_lr": (0.01, 0.03), "stop_token_prob": (0.5, 0.9),
                       "subject_templates": (0, 8), "memory_rank": (None, 64), "answer_stop": (False, True),
                       "answer_end": ("", ".")}


def test_lemoe_statements_recipe_is_the_gated_one_with_three_values_changed():
    """The statements YAML is described as the gated LEMoE YAML plus anchor_route, two subject
    statements and answer_stop."""
    from wise_plugin import LEMoEHyperParams

    gated = vars(LEMoEHyperParams.from_hparams("LEMoE/smollm2-135m-gate"))
    statements = vars(LEMoEHyperParams.from_hparams("LEMoE/smollm2-135m-gate-statements"))
    changed = {key: (gated[key], statements[key]) for key in gated if gated[key] != statements[key]}
    assert changed == {"anchor_route": (False, True), "subject_templates": (0, 2), "answer_stop": (False, True)}
