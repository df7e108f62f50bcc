"""The command's entry point: a failure of any kind ends in one line and an exit status, never a traceback."""
from __future__ import annotations

import os
import sys

from ..core.errors import LandmarkError, TrainingCancelled
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TrainingCancelled as stop:
        print(f"cancelled: {stop}", file=sys.stderr)
        return 130
    except LandmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `landmark runs | head -3`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain either
        return 141
    except OSError as error:  # a read-only folder, a full disk: the reason and the path, in one line
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, with the details on request
        if os.environ.get("LANDMARK_DEBUG"):
            raise
        print(f"internal error: {type(error).__name__}: {error} (set LANDMARK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
