"""joules: fast, cheap and actionable inference.

Importing joules never imports torch: serving needs only ONNX Runtime, numpy
and tokenizers.
"""

from joules.errors import JoulesError

__version__ = "0.1.0"
__all__ = ["JoulesError", "__version__"]
