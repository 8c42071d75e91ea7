from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from joules.errors import IntegrityError, InvalidNameError, ModelNotFoundError, RegistryError, UnsafeFileError
from joules.registry import Registry, Stage
from joules.settings import Settings


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    return Registry(Settings(home=tmp_path / "home"))


def test_versions_count_up_and_never_repeat(registry: Registry, tiny_bundle_dir: Path) -> None:
    a = registry.register(tiny_bundle_dir, "m")
    b = registry.register(tiny_bundle_dir, "m")
    assert (a.version, b.version) == (1, 2)
    assert a.stage is Stage.NONE
    registry.remove("m", 2)
    c = registry.register(tiny_bundle_dir, "m")
    assert c.version == 3, "a removed version number is not reused"
    assert [m.version for m in registry.list("m")] == [1, 3]
    assert not (registry.models_dir / "m" / "2").exists()


def test_registration_keeps_metrics_lineage_and_checksums(registry: Registry, tiny_bundle_dir: Path) -> None:
    mv = registry.register(tiny_bundle_dir, "m")
    assert set(mv.metrics) == {"validation", "test"}
    for split in mv.metrics.values():
        assert 0 <= split["f1"] <= 1 and 0 <= split["roc_auc"] <= 1 and 0 <= split["accuracy"] <= 1
        lo, hi = split["f1_ci95"]
        assert lo <= split["f1"] <= hi
    assert mv.lineage and mv.lineage[0]["step"] == "train"
    assert set(mv.checksums) >= {"model.onnx", "joules.yaml", "tokenizer.json", "model.safetensors", "config.json"}
    assert all(len(h) == 64 for h in mv.checksums.values())
    bundle = registry.load("m:1")
    assert bundle.spec.name == "m", "the registered copy carries its registered name"


def test_stages_and_bare_names_mean_production(registry: Registry, tiny_bundle_dir: Path) -> None:
    registry.register(tiny_bundle_dir, "m")
    registry.register(tiny_bundle_dir, "m")
    with pytest.raises(ModelNotFoundError, match="no production version"):
        registry.get("m")
    registry.promote("m", 1)
    assert registry.get("m").version == 1
    registry.promote("m", 2)
    assert registry.get("m").version == 2
    assert registry.get("m:1").stage is Stage.NONE, "promoting demotes the previous production version"
    registry.promote("m", 1, "staging")
    assert registry.get("m:1").stage is Stage.STAGING
    with pytest.raises(RegistryError, match="production version"):
        registry.remove("m", 2)
    registry.remove("m", 2, force=True)
    with pytest.raises(ModelNotFoundError, match="no version 2"):
        registry.get("m:2")
    with pytest.raises(ModelNotFoundError, match="no model named 'other'"):
        registry.get("other")
    with pytest.raises(RegistryError, match="unknown stage"):
        registry.promote("m", 1, "archived")


def test_integrity_is_checked_on_load(registry: Registry, tiny_bundle_dir: Path) -> None:
    mv = registry.register(tiny_bundle_dir, "m")
    with (mv.path / "model.onnx").open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IntegrityError, match=r"m:1: 'model.onnx' does not match its registered sha256"):
        registry.load("m:1")
    (mv.path / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.load("m:1")


def test_extra_file_after_registration_is_an_integrity_error(registry: Registry, tiny_bundle_dir: Path) -> None:
    mv = registry.register(tiny_bundle_dir, "m")
    (mv.path / "notes.txt").write_text("x")
    with pytest.raises(IntegrityError, match="added after registration"):
        registry.load("m:1")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "n" * 200, "tab\there"])
def test_bad_names_write_nothing(registry: Registry, tiny_bundle_dir: Path, bad: str) -> None:
    with pytest.raises(InvalidNameError):
        registry.register(tiny_bundle_dir, bad)
    assert not registry.home.exists() or not any(registry.models_dir.rglob("*"))
    assert registry.list() == []


def test_reading_an_empty_registry_creates_nothing(registry: Registry) -> None:
    assert registry.list() == []
    assert not registry.home.exists()


def test_a_pickle_in_a_bundle_is_refused(registry: Registry, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle_dir, copy)
    (copy / "extra.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UnsafeFileError, match=r"extra\.pkl"):
        registry.register(copy, "m")
    assert registry.list() == []


WRITER = """
import sys
from pathlib import Path
from joules.registry import Registry
from joules.settings import Settings
r = Registry(Settings(home=Path(sys.argv[1])))
for _ in range(int(sys.argv[3])):
    r.register(Path(sys.argv[2]), "m")
"""


def test_two_concurrent_writers_lose_no_version(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    home = tmp_path / "home"
    n = 6
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(tiny_bundle_dir), str(n)]) for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    registry = Registry(Settings(home=home))
    versions = [m.version for m in registry.list("m")]
    assert versions == list(range(1, 2 * n + 1))
    for v in versions:
        registry.verify(registry.get(f"m:{v}"))
    assert sorted(p.name for p in (home / "models" / "m").iterdir()) == sorted(str(v) for v in versions)
    assert not list((home / "models").glob(".staging-*"))
    assert json.loads(json.dumps(registry.get("m:1").to_dict()))["version"] == 1
