"""`digest`: the one command for users and admins. Each command is a thin door into the library.

The commands live by group in this package's modules (ops, day, subscribers, papers); importing
them adds them to `main`, the console entry point (`digest = "digest.cli:main"`).
"""

from . import day, ops, papers, subscribers  # noqa: F401  (each adds its commands to main)
from .base import main

__all__ = ["main"]
