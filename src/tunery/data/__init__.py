"""Training data: formats, a streaming validator, token statistics, estimates, split and converters.

Imports no torch; transformers is loaded only when a model's tokenizer is needed.
"""

from tunery.data.estimate import billed_tokens, measured_throughput, record_throughput
from tunery.data.formats import KINDS, Example, Format, detect_object_format
from tunery.data.reading import detect_format, read_examples
from tunery.data.validation import Problem, ValidationReport, validate_file

__all__ = [
    "KINDS", "Example", "Format", "Problem", "ValidationReport", "billed_tokens", "detect_format",
    "detect_object_format", "measured_throughput", "read_examples", "record_throughput", "validate_file",
]
