"""``joules import``: bring outside models in as bundles and register them.

Above the registry and beside the trainer in the layering: an import may export
with torch (Hugging Face directories) and registers the result, which the bundle
format itself must never do.
"""

from joules.imports.importers import import_model, prepare_import

__all__ = ["import_model", "prepare_import"]
