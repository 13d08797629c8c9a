"""Datasets: the folder format, the schema of label and attributes, and adapters of public layouts."""

from cfgen.data.schema import Attribute, Schema, infer_attribute
from cfgen.data.table import MetadataTable, read_imagefolder, write_card, write_metadata

__all__ = [
    "Attribute",
    "MetadataTable",
    "Schema",
    "infer_attribute",
    "read_imagefolder",
    "write_card",
    "write_metadata",
]
