"""Source databases, one module each; ``DATABASES`` maps a ``--format`` name to its
``Database``. Every module of this package is imported here, and defining a ``Database``
subclass registers it, so a new database is one new module (see ``base.py``)."""
import importlib
import pkgutil

from ..errors import ECGShardError
from .base import Database, Item

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

DATABASES = Database.registry


def get(name):
    """The database registered as ``name``; a clear error names the known ones."""
    if name not in DATABASES:
        raise ECGShardError(f"unknown database {name!r}; choose from {sorted(DATABASES)}")
    return DATABASES[name]


__all__ = ["DATABASES", "Database", "Item", "get"]
