"""The registry: versions, stages, lineage and integrity."""

from joules.registry.names import ModelRef, parse_ref, validate_name
from joules.registry.registry import ModelVersion, Registry, Stage

__all__ = ["ModelRef", "ModelVersion", "Registry", "Stage", "parse_ref", "validate_name"]
