"""``revq`` command line.  Each subcommand lives in its own module of this package.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``.  Modules are imported only when their command runs, so ``revq --help``
stays fast and an optional dependency of one command never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> (module, one-line help).  Help lives here too so that the top-level
# ``revq --help`` does not import every command module.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("revq.cli.demo", "Run the whole pipeline on the offline default (TAEF2 + Tiny-ImageNet-64)."),
    "encode": ("revq.cli.encode", "Encode images into a sharded, memory-mapped latent cache."),
    "train": ("revq.cli.train", "Train codebooks and rectifier on a latent cache."),
    "plan": ("revq.cli.plan", "Print parameter counts and memory of a preset before training."),
    "eval": ("revq.cli.eval", "Measure reconstruction quality of a trained tokenizer."),
    "tokenize": ("revq.cli.tokenize", "Export images as packed token shards."),
    "detokenize": ("revq.cli.detokenize", "Turn a token shard back into images."),
    "reconstruct": ("revq.cli.reconstruct", "Write original | VAE | ReVQ comparison grids."),
    "report": ("revq.cli.report", "Write a self-contained HTML report for a run directory."),
    "convert-official": ("revq.cli.convert_official", "Convert the authors' released ReVQ checkpoints."),
    "probe": ("revq.cli.probe", "Noise-tolerance probe of an autoencoder (paper Sec. 3.2)."),
    "capacity": ("revq.cli.capacity", "Capacity planner: codebook size per token count (paper App. D.1)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revq",
        description="revq: turn a pre-trained image VAE into a discrete VQ tokenizer (ReVQ).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        # Subparsers are filled lazily in main(): only the chosen command's module loads.
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"revq {name}", description=help_text)
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    from revq.errors import RevqError

    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}; choose from: {', '.join(COMMANDS)}")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    parser, module = _command_parser(name)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except RevqError as error:
        print(f"revq {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"revq {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
