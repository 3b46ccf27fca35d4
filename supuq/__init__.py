"""supuq: supervised uncertainty quantification for segmentation with multiple annotations."""

__version__ = "0.1.0"
