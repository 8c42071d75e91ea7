"""Silence ONNX Runtime's Python tools while a pass runs.

The transformer optimizer and the quantizer log advice through the root and
``onnxruntime`` loggers ("Please consider to run pre-processing", "Failed to
detect num_heads"); joules checks the outcome itself (fused op counts, parity)
and reports it, so the advice only adds noise to the terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

_LOGGERS = ("", "onnxruntime", "onnxruntime.transformers", "onnxruntime.quantization")


# ONNX Runtime's default severity for its C++ log (2: warning); it has no getter.
ORT_DEFAULT_SEVERITY = 2


@contextmanager
def quiet_onnxruntime_tools() -> Iterator[None]:
    import onnxruntime as ort

    # The sessions these tools open internally log every unused initializer they drop.
    ort.set_default_logger_severity(3)
    loggers = [logging.getLogger(n) for n in _LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        ort.set_default_logger_severity(ORT_DEFAULT_SEVERITY)
