"""Tensor parallelism: one Llama-architecture decoder split across N rank processes.

``TensorParallelDecoder`` implements the engine's ``Decoder`` contract
(``joules.runtime.generation.decoder``) without importing torch in the caller;
the ranks (``python -m joules.parallel.worker``, or ``joules worker`` on other
machines) hold 1/N of every layer each and talk over torch.distributed or
shared memory. See docs/parallel.md.
"""

from joules.parallel.decoder import ParallelOptions, TensorParallelDecoder
from joules.parallel.llama import LlamaShape
from joules.parallel.memory import parse_size
from joules.parallel.plan import ShardPlan, check_fits

__all__ = ["LlamaShape", "ParallelOptions", "ShardPlan", "TensorParallelDecoder", "check_fits", "parse_size"]
