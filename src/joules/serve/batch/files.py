"""The files a batch job writes beside its output, and who may write them.

A job over ``OUT`` writes ``OUT.partial`` (or ``OUT.parts/`` for Parquet),
``OUT.errors.jsonl.partial``, ``OUT.checkpoint.json`` (through
``OUT.checkpoint.json.tmp``) and, at the end, ``OUT`` and ``OUT.errors.jsonl``
(Parquet through ``OUT.tmp``). It truncates and replaces those names, so:

- an input that is one of them is refused before anything is opened (it
  would be cut back to the last checkpoint, or replaced);
- one job at a time writes them: ``OUT.lock`` is held with ``flock`` for the
  whole run and names the holder's pid. The kernel releases the lock when its
  holder dies, even by SIGKILL, so the lock file a killed run leaves behind is
  simply taken over by the next run;
- a run that fails before its first checkpoint removes the files it started.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from joules.errors import DataError


@dataclass(frozen=True)
class JobFiles:
    output: Path
    partial: Path  # OUT.partial, or the directory OUT.parts/ of Parquet part files
    errors: Path
    errors_partial: Path
    checkpoint: Path
    lock_file: Path

    @classmethod
    def of(cls, output: Path, out_format: str) -> JobFiles:
        def beside(suffix: str) -> Path:
            return output.with_name(output.name + suffix)

        return cls(
            output=output,
            partial=beside(".parts" if out_format == "parquet" else ".partial"),
            errors=beside(".errors.jsonl"),
            errors_partial=beside(".errors.jsonl.partial"),
            checkpoint=beside(".checkpoint.json"),
            lock_file=beside(".lock"),
        )

    def written(self) -> list[Path]:
        """Every path the job creates, truncates or replaces (the parts directory's files are under ``partial``)."""
        tmp = [p.with_name(p.name + ".tmp") for p in (self.output, self.checkpoint)]
        return [self.output, self.partial, self.errors, self.errors_partial, self.checkpoint, self.lock_file, *tmp]

    def refuse_input(self, input_path: Path) -> None:
        """Raise DataError if ``input_path`` is (or, through a link, leads to) a file the job writes."""
        given = input_path.resolve()
        for own in self.written():
            if given == own.resolve() or given.is_relative_to(self.partial.resolve()):
                raise DataError(
                    f"the input {str(input_path)!r} is {str(own if given == own.resolve() else self.partial)!r}, "
                    f"a file this job writes for its output {str(self.output)!r} (it would be truncated or "
                    "replaced); rename the input or choose another output (-o)"
                )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``OUT.lock`` for the block; DataError if another live run holds it."""
        fd = self._acquire()
        try:
            yield
        finally:
            self.lock_file.unlink(missing_ok=True)  # still held here: no one can take it between
            os.close(fd)

    @contextmanager
    def running(self) -> Iterator[None]:
        """The block of one run: the output's folder made, ``OUT.lock`` held, and a run that fails before its
        first checkpoint leaves nothing behind."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with self.lock():  # one run at a time per output
            try:
                yield
            except BaseException:
                if not self.checkpoint.exists():
                    self.discard_partials()  # a failed start leaves nothing behind
                raise

    def _acquire(self) -> int:
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise DataError(
                    f"another joules batch (pid {holder}) is writing {str(self.output)!r}; wait for it to finish "
                    "or stop it, or write to another output (-o)"
                ) from None
            # The holder before us may have removed the file between our open and our lock: then we
            # locked a name no one else sees; start again on the file now at that name.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)

    def discard_partials(self) -> None:
        """Remove what a run started before its first checkpoint (nothing in it is recorded anywhere)."""
        for p in (self.errors_partial, self.checkpoint.with_name(self.checkpoint.name + ".tmp")):
            p.unlink(missing_ok=True)
        if self.partial.is_dir():
            shutil.rmtree(self.partial)
        else:
            self.partial.unlink(missing_ok=True)
