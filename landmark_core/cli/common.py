"""What the CLI's commands share: argument types, finished runs, datasets and the progress bar."""
from __future__ import annotations

import argparse
import sys
import time

from ..core.locations import DEMO_ALIASES, demo_dir, resolve_dataset


def bounded_number(kind, low, high=None):
    """An argparse type: a finite ``kind`` (int or float) from ``low`` to ``high``, refused with its range
    otherwise (``nan``, ``inf``, ``-1`` and ``1e308`` mean nothing a user wants)."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {span}")
        return value
    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


def open_finished_run(value: str, action: str):
    """The run named ``value``, refused while a process trains it (its model is half-made until then)."""
    from ..runs.run import Run, refuse_while_training
    run = Run.open(value)
    refuse_while_training(run.path, action)
    return run


def resolve_data(value: str) -> str:
    """``demo`` means the built-in demo set (drawn on first use, with a progress bar); anything else is a folder."""
    from ..core.demo import is_complete_demo
    if value in DEMO_ALIASES and not is_complete_demo(demo_dir()):
        print(f"creating the demo dataset in {demo_dir()} ...", file=sys.stderr)
    return resolve_dataset(value, progress=ProgressBar("demo classes"))


class ProgressBar:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str, unit_scale: float = 1.0, unit: str = ""):
        self.label, self.scale, self.unit = label, unit_scale, unit
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.line_open = False  # a terminal line drawn without its newline yet

    def __call__(self, done: int, total: int | None) -> None:
        now = time.time()
        finished = total is not None and done >= total
        if not finished and now - self.last < (0.1 if self.tty else 5.0):
            return
        self.last = now
        amount = f"{done * self.scale:,.1f}{self.unit}" if self.scale != 1 else f"{done:,}"
        if total:
            share = min(1.0, done / total)
            bar = "#" * int(share * 30)
            line = f"{self.label} [{bar:<30}] {share:6.1%} {amount}"
        else:
            line = f"{self.label} {amount}"
        print(("\r" + line) if self.tty else line, end="\n" if finished or not self.tty else "", file=sys.stderr, flush=True)
        self.line_open = self.tty and not finished


def config_flags() -> list:
    """The TrainConfig fields a user sets from the command line (each with its help text)."""
    import dataclasses

    from ..runs.config import TrainConfig
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
