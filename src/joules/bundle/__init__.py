"""Bundles: the unit that is registered, optimized and served."""

from joules.bundle.bundle import Bundle, sha256_file
from joules.bundle.dataset import DATASET_FILE, Split, SplitDataset
from joules.bundle.safety import check_safe, scan_directory
from joules.bundle.spec import (
    SPEC_FILE,
    Activation,
    BundleSpec,
    Postprocess,
    Preprocess,
    Task,
    TensorSpec,
)

__all__ = [
    "DATASET_FILE",
    "SPEC_FILE",
    "Activation",
    "Bundle",
    "BundleSpec",
    "Postprocess",
    "Preprocess",
    "Split",
    "SplitDataset",
    "Task",
    "TensorSpec",
    "check_safe",
    "scan_directory",
    "sha256_file",
]
