"""Shared fixtures: the real SmolLM2 model (converted once), its tokenizer, paths of shared data."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HPARAMS_DIR = os.path.join(ROOT, "hparams", "WISE")
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
ZSRE_EDIT = os.path.join(SHARED_DATA, "wise", "ZsRE", "zsre_mend_edit.json")
ZSRE_TRAIN = os.path.join(SHARED_DATA, "wise", "ZsRE", "zsre_mend_train.json")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from wise_plugin.embedded import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def tok(smollm2_path):
    """SmolLM2's tokenizer, for the tiny random models many tests edit (pads with end of sequence)."""
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(smollm2_path)
    tok.pad_token_id = tok.eos_token_id
    return tok


def tiny_llama(seed: int = 0, hidden: int = 32):
    """A seeded 3-layer random LLaMA with SmolLM2's vocabulary: fast enough to edit in every test."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture()
def smollm2(smollm2_path):
    """A fresh SmolLM2 model and tokenizer per test, set up as the hosts' BaseEditor does."""
    from transformers import AutoModelForCausalLM, GPT2Tokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_path).eval()
    tok = GPT2Tokenizer.from_pretrained(smollm2_path)
    tok.pad_token_id = tok.eos_token_id
    tok.padding_side = "left"
    return model, tok


@pytest.fixture()
def smollm2_hparams(smollm2_path):
    from wise_plugin import WISEHyperParams

    hparams = WISEHyperParams.from_hparams(os.path.join(HPARAMS_DIR, "smollm2-135m.yaml"))
    assert hparams.model_name == smollm2_path
    return hparams


def _host() -> tuple[str, str]:
    """(flavour, description) of the EasyEdit this test process uses, found without importing it."""
    import importlib.util

    import wise_plugin  # noqa: F401  (honours WISE_PLUGIN_EASYEDIT)
    from wise_plugin.host import HostImportError, host_flavour

    try:
        flavour = host_flavour()
    except HostImportError:
        return "none", "no EasyEdit"
    root = list(importlib.util.find_spec("easyeditor").submodule_search_locations)[0]
    from importlib.metadata import version

    name = "source-repository EasyEdit" if flavour == "source" else "package-index easyeditor 0.0.1.dev0"
    return flavour, f"{name} at {os.path.dirname(root)}, transformers {version('transformers')}"


def pytest_configure(config):
    config.addinivalue_line("markers", "host: goes through a host EasyEdit (run on both hosts by `make test`)")
    config.addinivalue_line("markers", "source_host: needs the source-repository EasyEdit (`make test-source`)")


def pytest_collection_modifyitems(config, items):
    """Tests that need the source-repository host are deselected on any other host."""
    if _host()[0] == "source":
        return
    keep = [item for item in items if item.get_closest_marker("source_host") is None]
    dropped = [item for item in items if item.get_closest_marker("source_host") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say on which host EasyEdit the tests ran, and how many."""
    counts = {key: len(terminalreporter.stats.get(key, [])) for key in ("passed", "failed", "error", "skipped")}
    counts = {key: value for key, value in counts.items() if value}
    ran = ", ".join(f"{value} {key}" for key, value in counts.items()) or "no tests"
    terminalreporter.write_line(f"wise-plugin host summary: {ran} on the {_host()[1]}")
