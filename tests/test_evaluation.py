"""The example scripts' shared helpers: ``--set`` overrides and result files."""

from __future__ import annotations

import json

import pytest

from wise_plugin.evaluation import apply_overrides, example_parser, write_result
from wise_plugin.wise.config import WISEHyperParams


def _parser():
    return example_parser("test", "h.yaml", "d.json", "out", n=3)


def test_overrides_set_json_values_and_reject_unknown_keys_and_bad_json(capsys):
    hparams = WISEHyperParams(alg_name="WISE", model_name="m", device="cpu",
                              inner_params=["model.layers[1].mlp.down_proj.weight"])
    apply_overrides(hparams, ["edit_lr=1.5", 'merge_alg="linear"', "retrieve=true"], _parser())
    assert (hparams.edit_lr, hparams.merge_alg, hparams.retrieve) == (1.5, "linear", True)
    with pytest.raises(SystemExit):
        apply_overrides(hparams, ["edit_rate=1"], _parser())
    assert "'edit_rate' is not a WISEHyperParams key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        apply_overrides(hparams, ["merge_alg=linear"], _parser())
    assert "is not JSON" in capsys.readouterr().err


def test_write_result_writes_json_and_a_markdown_row(tmp_path):
    out = str(tmp_path / "sub" / "run")
    table = write_result({"n": 2, "records": []}, out, "Title", {"T": 2, "rewrite_acc": 0.5, "greedy": None})
    assert "| 2 | 0.500 | - |" in table
    assert json.load(open(out + ".json"))["n"] == 2
    assert open(out + ".md").read().startswith("# Title")
