"""The generation engine on a tiny random Llama: exactness, batching, sampling, limits."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from joules.errors import InputError, QueueFullError
from joules.runtime.generation import (
    Engine,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)

PROMPTS = {
    "a": "The capital of France is",
    "b": "Once upon a time, in a small village by the sea, there lived an old fisherman.",
    "c": "Héllo",
    "d": "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
}


def greedy(n: int, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)  # type: ignore[arg-type]


def ids(engine: Engine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False).ids


def torch_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    out = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(prompt) :]


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_greedy_matches_transformers_token_by_token(engine: Engine, tiny_llm_dir: Path) -> None:
    prompt = ids(engine, PROMPTS["b"])
    got = engine.generate(GenerationRequest(prompt_token_ids=prompt, params=greedy(24)))
    assert list(got.token_ids) == torch_greedy(tiny_llm_dir, prompt, 24)
    assert got.finish_reason == "length" and got.usage.completion_tokens == 24
    assert got.usage.prompt_tokens == len(prompt)


def test_outputs_identical_alone_and_in_a_batch_that_changes(make_engine: Callable[..., Engine]) -> None:
    # A small step budget: prompts are chunked, and decodes share steps with prompt chunks.
    engine = make_engine(max_num_batched_tokens=12, max_num_seqs=4)
    lengths = {"a": 40, "b": 10, "c": 15, "d": 20}
    reqs = {
        k: GenerationRequest(prompt_token_ids=ids(engine, PROMPTS[k]), params=greedy(n)) for k, n in lengths.items()
    }
    solo = {k: engine.generate(r).token_ids for k, r in reqs.items()}
    steps_before = engine.stats().steps

    q: queue.SimpleQueue[GenerationDelta] = queue.SimpleQueue()
    got: dict[str, list[int]] = {k: [] for k in reqs}
    names = {r.id: k for k, r in reqs.items()}
    engine.start(reqs["a"], q.put)
    engine.start(reqs["b"], q.put)  # leaves after 10 tokens, mid-way through a
    finished = 0
    while finished < 4:
        d = q.get(timeout=60)
        k = names[d.request_id]
        got[k].extend(d.token_ids)
        finished += d.finished
        if k == "a" and len(got["a"]) == 5:
            engine.start(reqs["c"], q.put)  # joins mid-way
        if k == "a" and len(got["a"]) == 15:
            engine.start(reqs["d"], q.put)
    assert got == {k: list(v) for k, v in solo.items()}
    # They did share steps: fewer steps than one per token.
    assert engine.stats().steps - steps_before < sum(lengths.values())


def test_greedy_chat_output_is_deterministic_and_streams_whole_characters(engine: Engine) -> None:
    # A random model writes bytes that make multi-byte characters out of several tokens.
    req = GenerationRequest(prompt=PROMPTS["c"], params=SamplingParams(temperature=1.0, seed=3, max_tokens=120))
    deltas = list(engine.stream(req))
    token_ids = [t for d in deltas for t in d.token_ids]
    full = engine.tokenizer.decode(token_ids, skip_special_tokens=True)
    streamed = "".join(d.text for d in deltas)
    assert streamed == full[: len(streamed)] and (deltas[-1].finish_reason != "length" or streamed == full)
    assert any(ord(ch) > 127 for ch in streamed), "the sample held no non-ASCII character: the test proves nothing"
    assert not any(d.text.endswith("\ufffd") for d in deltas if d.text and "\ufffd" not in full)


def test_text_stream_holds_partial_characters(engine: Engine) -> None:
    from joules.runtime.generation.text import TextStream

    text = "猫🐱é"
    toks = ids(engine, text)
    pieces = [engine.tokenizer.decode([t]) for t in toks]
    assert any("\ufffd" in p for p in pieces), "each character is one token: pick a rarer text"
    stream = TextStream(engine.tokenizer)
    chunks = [stream.add(t) for t in toks]
    assert "".join(chunks) + stream.flush() == text
    assert all("\ufffd" not in c for c in chunks)


def test_seeded_sampling_is_reproducible_alone_and_in_a_busy_batch(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_num_seqs=6)
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=7, max_tokens=30, ignore_eos=True)
    req = lambda: GenerationRequest(prompt=PROMPTS["a"], params=params)  # noqa: E731
    alone = engine.generate(req()).token_ids
    assert engine.generate(req()).token_ids == alone
    busy = [
        GenerationRequest(prompt=PROMPTS[k], params=SamplingParams(temperature=1.0, max_tokens=25, ignore_eos=True))
        for k in "bcd"
    ]
    results = engine.generate_many([*busy, req(), *busy[:0]])
    assert results[3].token_ids == alone
    other = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=8, max_tokens=30, ignore_eos=True)
    assert engine.generate(GenerationRequest(prompt=PROMPTS["a"], params=other)).token_ids != alone


def test_stop_strings_cut_exactly_even_across_tokens(engine: Engine) -> None:
    base = engine.generate(GenerationRequest(prompt=PROMPTS["a"], params=greedy(40)))
    text = base.text
    # A stop string that starts in one token and ends in the next.
    ends = [len(engine.tokenizer.decode(list(base.token_ids[: k + 1]))) for k in range(len(base.token_ids))]
    cut = next(e for e in ends if 3 <= e <= len(text) - 3 and "\ufffd" not in text[e - 2 : e + 2])
    stop = text[cut - 2 : cut + 2]
    want = text[: text.index(stop)]
    deltas = list(engine.stream(GenerationRequest(prompt=PROMPTS["a"], params=greedy(40, stop=(stop, "\x00never")))))
    result = GenerationResult.gather(deltas)
    assert result.text == want
    assert result.finish_reason == "stop" and result.stop_reason == stop
    assert all(stop not in d.text for d in deltas)


def test_stop_token_ids_and_eos(engine: Engine) -> None:
    base = engine.generate(GenerationRequest(prompt=PROMPTS["b"], params=greedy(20)))
    stop_id = base.token_ids[5]
    got = engine.generate(GenerationRequest(prompt=PROMPTS["b"], params=greedy(20, stop_token_ids=(stop_id,))))
    first = base.token_ids.index(stop_id)
    assert got.token_ids == base.token_ids[: first + 1]
    assert got.finish_reason == "stop" and got.stop_reason == stop_id


def test_max_tokens_and_context_overflow(engine: Engine) -> None:
    r = engine.generate(GenerationRequest(prompt=PROMPTS["a"], params=greedy(5)))
    assert r.usage.completion_tokens == 5 and len(r.token_ids) == 5 and r.finish_reason == "length"
    with pytest.raises(InputError, match="context holds 256 tokens"):
        engine.generate(GenerationRequest(prompt_token_ids=[5] * 300, params=greedy(4)))
    with pytest.raises(InputError, match="max_tokens"):
        engine.generate(GenerationRequest(prompt_token_ids=[5] * 200, params=greedy(100)))
    # Without max_tokens, the completion ends when the context is full.
    full = engine.generate(
        GenerationRequest(prompt_token_ids=[5] * 250, params=SamplingParams(temperature=0, ignore_eos=True))
    )
    assert full.usage.completion_tokens == 6 and full.finish_reason == "length"


def test_abort_frees_the_slot_and_stops_the_work(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_num_seqs=2)
    req = GenerationRequest(prompt=PROMPTS["a"], params=greedy(200))
    stream = engine.stream(req)
    first = [next(stream) for _ in range(3)]
    assert all(d.finish_reason is None for d in first)
    engine.abort(req.id)
    rest = list(stream)
    assert rest[-1].finish_reason == "abort"
    assert wait_until(lambda: engine.stats().running == 0)
    done = engine.stats().completion_tokens
    assert done < 200
    # Closing a stream early aborts too.
    other = engine.stream(GenerationRequest(prompt=PROMPTS["b"], params=greedy(200)))
    next(other)
    other.close()
    assert wait_until(lambda: engine.stats().running == 0 and engine.stats().requests_finished == 2)
    after = engine.stats().completion_tokens
    time.sleep(0.2)
    assert engine.stats().completion_tokens == after < done + 200


def test_queue_full_is_refused_with_retry_after(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_num_seqs=1, max_waiting=1)
    s1 = engine.stream(GenerationRequest(prompt=PROMPTS["a"], params=greedy(200)))
    s2 = engine.stream(GenerationRequest(prompt=PROMPTS["b"], params=greedy(200)))
    with pytest.raises(QueueFullError) as e:
        engine.stream(GenerationRequest(prompt=PROMPTS["c"], params=greedy(5)))
    assert e.value.retry_after_s >= 1
    s1.close()
    s2.close()


def test_chunked_prefill_interleaves_with_running_decodes(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_num_batched_tokens=8, max_num_seqs=4)
    q: queue.SimpleQueue[GenerationDelta] = queue.SimpleQueue()
    a = GenerationRequest(prompt=PROMPTS["a"], params=greedy(80))
    long_prompt = ids(engine, " ".join([PROMPTS["b"]] * 4))[:150]
    b = GenerationRequest(prompt_token_ids=long_prompt, params=greedy(3))
    engine.start(a, q.put)
    while q.get(timeout=60).request_id != a.id:
        pass
    engine.start(b, q.put)
    a_tokens_before_b = 0
    while True:
        d = q.get(timeout=60)
        if d.request_id == b.id:
            break
        a_tokens_before_b += 1
    # b's 150-token prompt ran in chunks of at most 7 tokens beside a's decodes: a kept streaming.
    assert a_tokens_before_b >= 150 // 7 - 1
    engine.abort(a.id)


def test_prefix_cache_reuses_a_shared_system_prompt(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(prefix_cache_slots=2, min_prefix_tokens=8)
    system = {"role": "system", "content": PROMPTS["d"] + " " + PROMPTS["b"]}
    chat = lambda q: GenerationRequest(messages=[system, {"role": "user", "content": q}], params=greedy(12))  # noqa: E731
    engine.generate(chat("Héllo"))
    second = engine.generate(chat("The capital of France is"))
    assert second.usage.cached_tokens >= len(ids(engine, system["content"]))
    assert engine.stats().prefix_cache_hits >= 1
    cold = make_engine(prefix_cache_slots=0)
    assert cold.generate(chat("The capital of France is")).token_ids == second.token_ids


def test_preemption_recomputes_and_keeps_the_text(make_engine: Callable[..., Engine]) -> None:
    roomy = make_engine()
    reqs = [GenerationRequest(prompt=PROMPTS[k], params=greedy(40)) for k in "abd"]
    want = [roomy.generate(r).token_ids for r in reqs]
    per_token = roomy.decoder.config.kv_bytes_per_token
    tight = make_engine(kv_cache_bytes=per_token * 100, prefix_cache_slots=0)
    got = [
        r.token_ids for r in tight.generate_many([GenerationRequest(prompt=r.prompt, params=r.params) for r in reqs])
    ]
    assert got == want
    assert tight.stats().preemptions >= 1


def test_logprobs_are_the_models(engine: Engine, tiny_llm_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    prompt = ids(engine, PROMPTS["a"])
    r = engine.generate(GenerationRequest(prompt_token_ids=prompt, params=greedy(4, logprobs=True, top_logprobs=3)))
    assert r.logprobs is not None and len(r.logprobs) == 4
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llm_dir), dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + list(r.token_ids)])).logits[0]
    want = torch.log_softmax(logits, -1).numpy()
    for i, lp in enumerate(r.logprobs):
        row = want[len(prompt) - 1 + i]
        assert lp.token_id == r.token_ids[i] == lp.top[0][0]
        assert abs(lp.logprob - row[lp.token_id]) < 1e-4
        assert [t for t, _ in lp.top] == list(np.argsort(-row, kind="stable")[:3])
        assert all(abs(v - row[t]) < 1e-4 for t, v in lp.top)


def test_async_submit_streams_and_cancellation_aborts(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_num_seqs=1)

    async def main() -> str:
        text = "".join([d.text async for d in engine.submit(GenerationRequest(prompt=PROMPTS["a"], params=greedy(8)))])
        # aclose() before the end aborts.
        closed = engine.submit(GenerationRequest(prompt=PROMPTS["b"], params=greedy(200)))
        await closed.__anext__()
        await closed.aclose()
        # A request waiting behind a busy slot: its consumer is cancelled while awaiting a delta.
        blocker = engine.stream(GenerationRequest(prompt=PROMPTS["c"], params=greedy(200)))
        waiting = engine.submit(GenerationRequest(prompt=PROMPTS["d"], params=greedy(50)))
        task = asyncio.create_task(waiting.__anext__())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        blocker.close()
        return text

    text = asyncio.run(main())
    assert text == engine.generate(GenerationRequest(prompt=PROMPTS["a"], params=greedy(8))).text
    assert wait_until(lambda: engine.stats().running == 0 and engine.stats().waiting == 0)
    # Nothing ran for the cancelled request: 8 + 8 tokens, the closed one's few, the blocker's few.
    assert engine.stats().completion_tokens < 8 + 8 + 100


def test_every_completion_is_priced(engine: Engine) -> None:
    r = engine.generate(GenerationRequest(prompt=PROMPTS["b"], params=greedy(6)))
    assert r.cost.energy_j > 0 and r.cost.usd > 0 and r.cost.cpu_s > 0


def test_non_finite_logits_end_that_sequence_only(tiny_llm_bundle: Path, tmp_path: Path) -> None:
    import shutil

    import onnx

    from joules.bundle import Bundle
    from joules.runtime.executor import RuntimeOptions
    from joules.runtime.generation import EngineConfig, engine_from_bundle
    from joules.settings import Settings

    # Poison one token's embedding in a copy of the bundle (the output head keeps a clean copy):
    # any sequence holding that token gets NaN logits, the others none.
    path = Path(shutil.copytree(tiny_llm_bundle, tmp_path / "bundle"))
    model = onnx.load(str(path / "model.onnx"))
    embed = next(t for t in model.graph.initializer if t.name == "w.embed_tokens")
    clean = onnx.numpy_helper.to_array(embed)
    poisoned = clean.copy()
    poisoned[300] = np.nan
    embed.CopyFrom(onnx.numpy_helper.from_array(poisoned, "w.embed_tokens"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(clean, "w.lm_head_clean"))
    head = next(n for n in model.graph.node if n.op_type == "Gemm")
    head.input[1] = "w.lm_head_clean"
    onnx.save(model, str(path / "model.onnx"), save_as_external_data=True, location="poisoned.data")
    engine = engine_from_bundle(
        Bundle.load(path),
        EngineConfig(max_model_len=64, max_num_seqs=2),
        options=RuntimeOptions(intra_op_threads=1),
        settings=Settings(home=tmp_path / "home", watts_per_core=3.0, static_watts=10.0, vcpus=2),
    )
    try:
        bad = GenerationRequest(prompt_token_ids=[5, 300, 7], params=greedy(5))
        good = GenerationRequest(prompt_token_ids=[5, 6, 7], params=greedy(5))
        results = engine.generate_many([bad, good])
        assert results[0].finish_reason == "error" and "non-finite" in (results[0].error or "")
        assert results[0].token_ids == ()
        assert results[1].finish_reason == "length" and len(results[1].token_ids) == 5
    finally:
        engine.close()


def test_generating_never_imports_torch(tiny_llm_bundle: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from joules.runtime.generation import bundle_engine, GenerationRequest, SamplingParams, EngineConfig\n"
        "import joules.cli.main; joules.cli.main.build_parser()\n"
        f"e = bundle_engine({str(tiny_llm_bundle)!r}, EngineConfig(max_model_len=256, max_num_seqs=2))\n"
        "r = e.generate(GenerationRequest(messages=[{'role': 'user', 'content': 'hi'}],"
        " params=SamplingParams(max_tokens=3)))\n"
        "e.close()\n"
        "assert r.usage.completion_tokens >= 1\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
