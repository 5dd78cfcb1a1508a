"""fmssl-bench: reference harness for foundation-model-assisted semi-supervised medical image segmentation."""

__version__ = "0.1.0"
