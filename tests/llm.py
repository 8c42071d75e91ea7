"""A tiny random-weight Llama with a real byte-level BPE tokenizer, built in seconds (no download).

The tokenizer is trained here on a few sentences, most of them not ASCII, so
that many characters take several tokens (what the streaming tests need).
The model is ``LlamaForCausalLM`` from a ``LlamaConfig`` with random weights,
saved as safetensors with a chat template (SmolLM2's) and an
end-of-sequence token: the same kind of directory as a real chat model.
"""

from __future__ import annotations

import json
from pathlib import Path

# SmolLM2-135M-Instruct's template (tokenizer_config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS = "<|im_end|>"
CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Héllo wörld, naïve café, crème brûlée, façade, über, déjà vu.",
    "世界你好，今天天气很好。我们去公园散步吧。猫在睡觉。",
    "こんにちは、世界。猫が好きです。",
    "Привет, мир! Как дела? Кошка спит на диване.",
    "Emoji: 🐱 🐶 🌍 🚀 ✨ — and a dash; «quotes» and ‘more’.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
]


def train_tokenizer(out: Path, vocab_size: int = 400) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    path = out / "tokenizer.json"
    tok.save(str(path))
    return path


def make_tiny_llama_dir(
    out: Path,
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    context: int = 512,
) -> Path:
    """A Hugging Face causal LM directory (config.json, model.safetensors, tokenizer, chat template)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(train_tokenizer(out)))
    eos = tok.token_to_id(EOS)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<|im_start|>"),
        eos_token_id=eos,
        pad_token_id=eos,
        # Wide random weights: distinct logits, so greedy choices are not near-ties.
        initializer_range=0.2,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": EOS, "bos_token": "<|im_start|>"}), encoding="utf-8"
    )
    return out
