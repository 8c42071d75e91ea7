from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest

from joules.bundle import check_safe, scan_directory
from joules.errors import UnsafeFileError


class Boom:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.sentinel), "w"))


@pytest.mark.parametrize("name", ["weights.pkl", "pytorch_model.bin", "model.pt", "x.joblib", "ckpt.pth", "data.npy"])
def test_pickle_names_are_refused_and_never_opened(tmp_path: Path, name: str) -> None:
    sentinel = tmp_path / "OPENED"
    (tmp_path / "d").mkdir()
    with (tmp_path / "d" / name).open("wb") as f:
        pickle.dump(Boom(sentinel), f)
    with pytest.raises(UnsafeFileError, match=name.replace(".", r"\.")):
        scan_directory(tmp_path / "d")
    assert not sentinel.exists()


def test_pickle_content_under_an_innocent_name_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "OPENED"
    f = tmp_path / "weights.json"
    f.write_bytes(pickle.dumps(Boom(sentinel), protocol=4))
    with pytest.raises(UnsafeFileError, match="pickle header"):
        check_safe(f)
    assert not sentinel.exists()


def test_torch_zip_checkpoint_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "model.data"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02.")
    with pytest.raises(UnsafeFileError, match="torch checkpoint"):
        check_safe(f)


def test_safe_files_pass(tmp_path: Path) -> None:
    for name, data in [("model.onnx", b"\x08\x07"), ("joules.yaml", b"name: x\n"), ("tokenizer.json", b"{}")]:
        (tmp_path / name).write_bytes(data)
    assert len(scan_directory(tmp_path)) == 3


def test_symlink_escaping_the_bundle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "link.json").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(UnsafeFileError, match="outside the bundle"):
        scan_directory(tmp_path / "b")
