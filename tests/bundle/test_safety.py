from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("protocol", range(6))
def test_pickle_content_under_an_innocent_name_is_refused(tmp_path: Path, protocol: int) -> None:
    sentinel = tmp_path / "OPENED"
    f = tmp_path / "weights.json"
    f.write_bytes(pickle.dumps(Boom(sentinel), protocol=protocol))
    with pytest.raises(UnsafeFileError, match="it is a pickle"):
        check_safe(f)
    assert not sentinel.exists()


@pytest.mark.parametrize("protocol", range(6))
def test_large_and_plain_pickles_are_refused(tmp_path: Path, protocol: int) -> None:
    # Larger than the head that is decoded (no STOP in sight), and pickles that call nothing.
    for name, obj in [("big.json", {str(i): [float(i)] * 4 for i in range(20_000)}), ("small.yaml", [1, "a"])]:
        (tmp_path / name).write_bytes(pickle.dumps(obj, protocol=protocol))
        with pytest.raises(UnsafeFileError, match="it is a pickle"):
            check_safe(tmp_path / name)


def test_a_pickle_followed_by_other_bytes_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_bytes(pickle.dumps(Boom(tmp_path / "OPENED"), protocol=0) + b"\nthe rest of an innocent text file\n" * 100)
    with pytest.raises(UnsafeFileError, match="it is a pickle"):
        check_safe(f)


@pytest.mark.parametrize("member", ["archive/data.pkl", "data", "archive/data", "model/weights.x", "a/b/c.pickle"])
def test_torch_zip_checkpoint_is_refused(tmp_path: Path, member: str) -> None:
    f = tmp_path / "model.data"
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/version", b"3\n")
        z.writestr("archive/data/0", np.arange(64, dtype=np.float32).tobytes())
        z.writestr(member, pickle.dumps(Boom(tmp_path / "OPENED"), protocol=2))
    with pytest.raises(UnsafeFileError, match=f"holding '{member}', a pickle"):
        check_safe(f)


def test_a_real_torch_checkpoint_under_any_name_is_refused(tmp_path: Path) -> None:
    import torch

    f = tmp_path / "weights.safetensors"
    torch.save({"w": torch.ones(3)}, f)
    with pytest.raises(UnsafeFileError, match="a pickle"):
        check_safe(f)


def test_safe_formats_are_not_mistaken_for_pickles(tmp_path: Path, tiny_hf_dir: Path) -> None:
    """Real files of every format a bundle may hold, and text whose first bytes are pickle opcodes."""
    import onnx
    from safetensors.numpy import save_file

    from tests.helpers import numeric_onnx

    numeric_onnx(tmp_path / "model.onnx")
    onnx.save_model(
        onnx.load(str(tmp_path / "model.onnx")),
        str(tmp_path / "external.onnx"),
        save_as_external_data=True,
        location="external.onnx.data",
        size_threshold=0,
    )
    save_file({"w": np.ones((64, 64), np.float32)}, str(tmp_path / "model.safetensors"))
    # A safetensors file starts with its header's length: 0x0280 reads as a protocol-2 PROTO opcode.
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'.ljust(0x280)
    (tmp_path / "crafted.safetensors").write_bytes((0x280).to_bytes(8, "little") + header + b"\0\0\0\0")
    gguf = b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
    (tmp_path / "model.gguf").write_bytes(gguf + b"\x04\x00\x00\x00\x00\x00\x00\x00name" + b"\x08" * 64)
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        (tmp_path / f"hf-{name}").write_bytes((tiny_hf_dir / name).read_bytes())
    texts = {
        "joules.yaml": "format: 1\nname: spam\ntask: text-classification\n",
        "README.txt": "N.B. this model was trained on SMS messages.\n",
        "RECORD": "".join(f"scipy/file{i}.py,sha256=abc,{i}\n" for i in range(5000)),
        "notes.txt": "(see below)\nI like it\n.\n",
        "ids.csv": "id,text\na,hello\n",
        "dot": ".",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "data.zip").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        z.writestr("data/train.jsonl", '{"text": "hi"}\n')
        z.writestr("data", "id,text\n")
    assert len(scan_directory(tmp_path)) == len(list(tmp_path.iterdir()))


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
