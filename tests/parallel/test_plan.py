"""The split, the memory budget, the size parser, the OS cap and slice reads: no rank processes."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from joules.errors import BundleError, ConfigError
from joules.parallel.llama import LlamaShape
from joules.parallel.memory import _try_cgroup, parse_size
from joules.parallel.plan import Budget, ShardPlan, check_fits, slots_that_fit, split_evenly
from joules.parallel.weights import SliceReader, WeightIndex

SMOLLM2 = LlamaShape(  # SmolLM2-135M's config.json
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)
BIG = LlamaShape(  # the acceptance script's 3.3 GB random model
    vocab_size=49152,
    hidden_size=1536,
    intermediate_size=4224,
    num_layers=28,
    num_heads=12,
    num_kv_heads=6,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)
CAP = parse_size("2200M")


def budget(slots: int = 4) -> Budget:
    return Budget(num_slots=slots, max_model_len=2048, max_step_tokens=512, max_logit_rows=64)


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_evenly(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_smollm2_on_two_ranks_keeps_whole_kv_groups() -> None:
    a, b = ShardPlan(shape=SMOLLM2, world_size=2).shards
    assert (a.kv_heads, a.heads, b.kv_heads, b.heads) == ((0, 2), (0, 6), (2, 3), (6, 9))
    assert (a.ffn, b.ffn, a.vocab, b.vocab) == ((0, 768), (768, 1536), (0, 24576), (24576, 49152))


def test_more_ranks_than_kv_heads_is_refused() -> None:
    with pytest.raises(ConfigError, match="--tensor-parallel 3 or fewer"):
        ShardPlan(shape=SMOLLM2, world_size=4)


def test_vocab_parallel_against_replicated_bytes() -> None:
    split = ShardPlan(shape=BIG, world_size=3)
    repl = ShardPlan(shape=BIG, world_size=3, vocab_parallel=False)
    total = sum(split.weight_elements(r) for r in range(3))
    assert all(abs(split.weight_elements(r) * 3 - total) / total < 0.01 for r in range(3))  # about 1/3 each
    extra = repl.weight_elements(1) - split.weight_elements(1)
    assert extra == (BIG.vocab_size - BIG.vocab_size // 3) * BIG.hidden_size  # the whole embedding on every rank


def test_the_big_model_is_refused_unsplit_and_told_which_split_fits() -> None:
    with pytest.raises(ConfigError) as e:
        check_fits(BIG, world_size=1, cap=CAP, budget=budget(), vocab_parallel=True)
    msg = str(e.value)
    assert "2,200 MiB unsplit" in msg and "weights 3,123 MiB" in msg
    assert "use --tensor-parallel 3" in msg  # 2 ranks would need more than 2,200 MiB with 4 slots
    check_fits(BIG, world_size=3, cap=CAP, budget=budget(), vocab_parallel=True)


def test_slots_that_fit_fill_the_cap_and_no_more() -> None:
    n = slots_that_fit(BIG, world_size=3, cap=CAP, budget=budget(1), vocab_parallel=True)
    assert n >= 4
    check_fits(BIG, world_size=3, cap=CAP, budget=budget(n), vocab_parallel=True)
    with pytest.raises(ConfigError):
        check_fits(BIG, world_size=3, cap=CAP, budget=budget(n + 1), vocab_parallel=True)


@pytest.mark.parametrize(
    ("text", "n"),
    [("2200M", 2200 << 20), ("2200MiB", 2200 << 20), ("1.5G", 3 << 29), ("4096", 4096), (123, 123), ("2k", 2048)],
)
def test_parse_size(text: str | int, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "M", "12X", "-1", "0", True])
def test_parse_size_refuses(bad: object) -> None:
    with pytest.raises(ConfigError, match="memory size"):
        parse_size(bad)  # type: ignore[arg-type]


def test_rlimit_data_caps_the_process() -> None:
    code = "\n".join(
        [
            "import resource, pathlib",
            "import numpy as np",
            "from joules.parallel.memory import apply_cap",
            "c = apply_cap(300 << 20, name='t', cgroup_root=pathlib.Path('/nonexistent'))",
            "print(c.kind, resource.getrlimit(resource.RLIMIT_DATA)[0])",
            "try:",
            "    np.ones(400 << 20, dtype=np.uint8)",
            "except MemoryError:",
            "    print('refused')",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["rlimit_data", str(300 << 20), "refused"]
    assert resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY  # only the child was capped


def test_cgroup_v2_is_used_where_delegated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cgroup v2 tree as the kernel shows it: this process in /svc, the memory controller delegated.
    own = Path("/proc/self/cgroup").read_text().splitlines()
    line = next((x for x in own if x.startswith("0::")), None)
    if line is None:
        pytest.fail("no unified cgroup line in /proc/self/cgroup on this Linux")
    me = tmp_path / line[3:].lstrip("/")
    me.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (me / "cgroup.procs").write_text("")
    (me / "cgroup.subtree_control").write_text("memory\n")
    applied = _try_cgroup(1 << 30, "joules-tp-1", tmp_path)
    assert applied is not None and applied.kind == "cgroup"
    assert (me / "joules-tp-1" / "memory.max").read_text() == str(1 << 30)
    (me / "cgroup.subtree_control").write_text("cpu\n")  # not delegated: RLIMIT_DATA instead
    assert _try_cgroup(1 << 30, "joules-tp-2", tmp_path) is None


def test_slices_equal_safetensors_get_slice(tiny_llama: Path) -> None:
    from safetensors import safe_open

    index = WeightIndex.from_directory(tiny_llama)
    index.check(LlamaShape.read(tiny_llama))
    name = "model.layers.1.self_attn.o_proj.weight"
    entry = index[name]
    with safe_open(str(entry.file), "np") as f, SliceReader() as r:
        want_rows, want_cols = f.get_slice(name)[16:48], f.get_slice(name)[:, 32:80]
        rows = np.empty((32, entry.shape[1]), np.float32)
        cols = np.empty((entry.shape[0], 48), np.float32)
        r.read_rows(entry, 16, 48, rows)
        r.read_cols(entry, 32, 80, cols)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)


def test_a_truncated_weights_file_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    data = (tiny_llama / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="past the end of the file"):
        WeightIndex.from_directory(tmp_path)


def test_rope_types_joules_cannot_compute_are_refused(tiny_llama: Path) -> None:
    config = json.loads((tiny_llama / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(BundleError, match="rope type 'yarn'"):
        LlamaShape.from_config(config)
