"""f2lightning: train Florence-2-style vision foundation models with PyTorch Lightning."""

__version__ = "0.1.0"
