"""Converters from public dataset formats into the record schema, registered by format name."""

from f2lightning.data.converters import coco, flickr30k, icdar, maestro, refcoco, vizwiz, vqa, yolo  # noqa: F401  (registers)
from f2lightning.data.converters.base import (
    CONVERTERS,
    ConversionError,
    Converter,
    get_converter,
    path_parameters,
)

__all__ = [
    "CONVERTERS",
    "ConversionError",
    "Converter",
    "get_converter",
    "path_parameters",
]
