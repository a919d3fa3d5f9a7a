"""The ``fnprune`` command.

    fnprune analyze --model smollm2-135m --corpus brown --texts 40 --max-tokens 512 \\
        --components 128 --mode per-layer --runs 1 --seed 0 --out RUN_DIR
    fnprune networks RUN_DIR
    fnprune mask RUN_DIR --target-ratio 0.2 [--networks 1,5,9] [--threshold Z]
    fnprune export RUN_DIR --nifti maps.nii.gz [--labels labels.txt] [--mask mask.json]
    fnprune fetch-data                     (Brown corpus into $FNPRUNE_HOME)
    fnprune prune / evaluate / compare     (see fnprune/cli/pruning.py)
    fnprune export-gguf MODEL_DIR OUT.gguf [--type f32|f16|q8_0]   (llama.cpp; fnprune/cli/export.py)
    fnprune serve [--host H] [--port P]    (API + worker; runs the backend in its own process)
    fnprune ablate RUN_DIR --networks 12,40   (zero networks in the dense model; fnprune/cli/protect.py)

Each module registers its subcommands (``add_subcommands``); every subcommand sets
``func(args) -> int``. Errors are :class:`fnprune.errors.FnpruneError`, printed as one line
(``error: ...``) with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import FnpruneError
from . import analysis, export, protect, pruning, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fnprune", description="Find functional networks in a language model "
                                     "and prune it while keeping them.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    analysis.add_subcommands(subparsers)
    pruning.add_subcommands(subparsers)
    export.add_subcommands(subparsers)
    protect.add_subcommands(subparsers)
    serve.add_subcommands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FnpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
