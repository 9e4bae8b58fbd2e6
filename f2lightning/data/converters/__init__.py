"""Converters from public dataset formats into the record schema, registered by format name."""

from f2lightning.data.converters import (  # noqa: F401  (registers)
    coco,
    flickr30k,
    hf_parquet,
    icdar,
    maestro,
    refcoco,
    vizwiz,
    vqa,
    yolo,
)
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
