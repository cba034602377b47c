"""ecgshard: zero-shot 12-lead ECG classification against a frozen clinical text encoder.

Importing the package is cheap on purpose: torch and transformers are imported by the stages
that need them (fit, zeroshot, embed-text), never here; ``ZeroShotClassifier`` is imported
when first named.
"""
from .errors import BadRecordError, ECGShardError, SchemaError

__version__ = "0.1.0"
__all__ = ["ECGShardError", "BadRecordError", "SchemaError", "ZeroShotClassifier",
           "__version__"]


def __getattr__(name):
    # deferred on purpose: the classifier imports torch, which `import ecgshard` should not
    if name == "ZeroShotClassifier":
        from .classifier import ZeroShotClassifier

        return ZeroShotClassifier
    raise AttributeError(f"module 'ecgshard' has no attribute {name!r}")
