"""Entry point of the ``joules`` command.

Subcommand modules are listed here and imported when the parser is built;
each keeps its heavy imports inside its functions, so ``joules --help`` and
serving never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from joules import __version__
from joules.errors import JoulesError

# Modules that add subcommands, in the order `joules --help` lists them.
COMMAND_MODULES = [
    "joules.cli.train",
    "joules.cli.models",
    "joules.cli.predict",
    "joules.cli.optimize",
    "joules.cli.serve",
    "joules.cli.stream",
    "joules.cli.bench",
    "joules.cli.cost",
    "joules.cli.worker",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="joules",
        description="joules: train or import a model, compress it, serve it (batch, online, stream), "
        "act on its predictions and price every one of them.",
    )
    parser.add_argument("--version", action="version", version=f"joules {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code: int = args.func(args)
        return code
    except JoulesError as e:
        print(f"joules: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as e:
        # A file the user named cannot be read or written: say which, without a traceback.
        print(
            f"joules: error: {e.strerror or e}: {e.filename!r}" if e.filename else f"joules: error: {e}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("joules: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
