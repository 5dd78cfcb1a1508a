"""Dataset adapters: one module per file format, registered by name."""

from .base import Case, DatasetAdapter, Split, build_dataset, dataset_class, dataset_names, register_dataset
from . import folder2d, la, nnunet, synthetic  # noqa: F401  (registration side effects)

__all__ = ["Case", "DatasetAdapter", "Split", "build_dataset", "dataset_class", "dataset_names", "register_dataset"]
