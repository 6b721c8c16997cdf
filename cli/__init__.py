"""The ``m3vit`` command: one entry point, one subcommand per job.

All command-line code lives here, one module per side (``model``: golden, numerics, quantize;
``sim``: simulate, perf; ``runtime``: bundle, run; ``boards``: synth, build), each exposing
``register(subparsers)``; the packages themselves import nothing from here. A subcommand's
handler returns the exit status. Errors meant for the user are raised as ``UserError`` and printed without a traceback.
"""

import argparse
import sys

__all__ = ["UserError", "build_parser", "main"]


class UserError(Exception):
    """A problem with the user's input (file, shape, option): printed as one clear line."""


def build_parser():
    """The ``m3vit`` argument parser, every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="m3vit",
        description="M3ViT mixture-of-experts ViT accelerator: model, golden reference, gateware, board.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from . import boards, model, runtime, sim
    for jobs in (model, sim, runtime, boards):
        jobs.register(sub)
    return parser


def main(argv=None):
    """Run ``m3vit`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except UserError as err:
        print(f"m3vit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
