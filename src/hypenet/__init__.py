"""hypenet: convert a pretrained Transformer into a HypeNet hybrid with the HALO pipeline."""

__version__ = "0.1.0"
