"""The ``export-gguf`` subcommand: a pruned model directory as one GGUF file for llama.cpp.

    fnprune export-gguf MODEL_DIR OUT.gguf [--type f32|f16|q8_0] [--overwrite]
"""

from __future__ import annotations

import argparse

from ..models.export_gguf import GGUF_TYPES


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from ..models.export_gguf import export_gguf

    result = export_gguf(args.model_dir, args.out, out_type=args.type, overwrite=args.overwrite)
    print(result.summary())
    return 0


def add_subcommands(subparsers) -> None:
    """Register ``export-gguf``."""
    p = subparsers.add_parser(
        "export-gguf", help="write a pruned model directory as a GGUF file (llama.cpp, Ollama, node-llama-cpp)",
        description="Write a model directory saved by `fnprune prune` (LLaMA family) as one GGUF file: "
                    "architecture llama when every layer has the same MLP width and head counts, deci "
                    "(per-layer arrays) otherwise; tokenizer and chat template carried over.")
    p.add_argument("model_dir", help="a directory written by `fnprune prune` (or a stock LLaMA directory)")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--type", default="f16", metavar="TYPE",
                   help=f"tensor type: {', '.join(GGUF_TYPES)} (default f16; q8_0 quantises matrices whose rows "
                        "are a multiple of 32, others f16; norms and biases stay f32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_export_gguf)
