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
