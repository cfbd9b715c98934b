"""Tables in: reading, modality inference, validation, media decoding."""

from polymodal.data.io import read_table
from polymodal.data.schema import Modality, ProblemType, Schema, SchemaError, infer_schema
from polymodal.data.validate import BadRowsError, Problem

__all__ = [
    "BadRowsError",
    "Modality",
    "Problem",
    "ProblemType",
    "Schema",
    "SchemaError",
    "infer_schema",
    "read_table",
]
