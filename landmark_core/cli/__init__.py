"""The ``landmark`` command line: data, train, evaluate, export, predict, tag, review, runs, places, models.

Thin: each command parses its flags, calls one library function and prints; heavy libraries load only in the
commands that need them (``landmark runs`` and ``--help`` never load torch).
"""
from .main import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
