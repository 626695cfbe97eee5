"""Host integration with the installed package-index EasyEdit: import, registration, CPU devices."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest

import wise_plugin
from wise_plugin.host import alg_dict, host_flavour, register
from wise_plugin.host.compat import _wise_device, rewrite_source, torchvision_usable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.host
def test_wise_is_registered_in_the_dict_base_editor_reads():
    import easyeditor.editors.editor as editor_module

    assert editor_module.ALG_DICT is alg_dict()
    assert alg_dict()["WISE"] is wise_plugin.apply_wise_to_model


def test_an_existing_host_editor_stays_reachable_under_an_alias():
    def host_wise(*args, **kwargs):
        raise AssertionError("never called")

    table = {"WISE": host_wise}
    note = register(table, "WISE", wise_plugin.apply_wise_to_model)
    assert table["WISE-upstream"] is host_wise and table["WISE"] is wise_plugin.apply_wise_to_model
    assert "stays reachable as alg_name 'WISE-upstream'" in note
    assert register(table, "WISE", wise_plugin.apply_wise_to_model) == "WISE -> wise_plugin.wise.main.apply_wise_to_model"
    assert table["WISE-upstream"] is host_wise


@pytest.mark.host
def test_importing_the_plugin_does_not_import_the_host():
    code = ("import sys, wise_plugin, wise_plugin.wise.layer, wise_plugin.lemoe.layer; "
            "assert 'easyeditor' not in sys.modules; "
            "from easyeditor import BaseEditor; from easyeditor.util.alg_dict import ALG_DICT; "
            "assert ALG_DICT['WISE'] is wise_plugin.apply_wise_to_model; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


@pytest.mark.skipif(host_flavour() != "pypi", reason="the package-index host's rewriting")
def test_package_index_host_is_rewritten_for_cpu():
    utils = importlib.import_module("easyeditor.evaluate.evaluate_utils")  # attribute access is shadowed
    assert utils._wise_device(0) == "cpu"  # no CUDA on this machine
    assert _wise_device("cpu") == "cpu"


def test_rewrite_source_redirects_device_strings_and_moved_imports():
    source = textwrap.dedent('''
        x.to(f"cuda:{hparams.device}")
        y.to(f'cuda:{device}')
        z.to("cuda")
        from transformers.modeling_utils import apply_chunking_to_forward
    ''')
    out = rewrite_source(source)
    assert "_wise_device(hparams.device)" in out and "_wise_device(device)" in out
    assert ".to(_wise_device())" in out
    assert "from wise_plugin.host.modeling_utils import apply_chunking_to_forward" in out
    assert "cuda" not in out


def test_moved_transformers_helpers_are_served():
    from wise_plugin.host.modeling_utils import (PreTrainedModel, apply_chunking_to_forward,  # noqa: F401
                                                 find_pruneable_heads_and_indices, prune_linear_layer)

    heads, index = find_pruneable_heads_and_indices([1], n_heads=3, head_size=2, already_pruned_heads=set())
    assert heads == {1} and index.tolist() == [0, 1, 4, 5]


@pytest.mark.skipif(torchvision_usable(), reason="multimodal modules load for real when torchvision works")
@pytest.mark.host
def test_multimodal_parts_fail_with_a_clear_message_when_used():
    from easyeditor.trainer.blip2_models import Blip2OPT

    with pytest.raises(ImportError, match="needs torchvision"):
        Blip2OPT()


@pytest.mark.host
def test_a_broken_host_install_says_how_to_install(tmp_path):
    fake = tmp_path / "easyeditor"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named higher')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    env.pop("WISE_PLUGIN_EASYEDIT", None)
    result = subprocess.run([sys.executable, "-c", "import wise_plugin; import easyeditor"], capture_output=True,
                            text=True, env=env)
    assert result.returncode != 0
    assert "HostImportError: Importing EasyEdit (pypi flavour) failed: ImportError: No module named higher" in result.stderr
    assert "pip install --no-deps easyeditor==0.0.1.dev0" in result.stderr
