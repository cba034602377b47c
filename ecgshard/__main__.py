"""``python -m ecgshard`` (and ``torchrun -m ecgshard fit ...``): the command line."""
from .cli import main

main()
