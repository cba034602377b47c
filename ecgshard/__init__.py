"""ecgshard: zero-shot 12-lead ECG classification against a frozen clinical text encoder.

Importing the package is cheap on purpose: torch and transformers are imported by the stages
that need them (fit, zeroshot, embed-text), never here.
"""
from .errors import BadRecordError, ECGShardError, SchemaError

__version__ = "0.1.0"
__all__ = ["ECGShardError", "BadRecordError", "SchemaError", "__version__"]
