"""``revq tokenize``: export images as packed token shards (resumable)."""

from __future__ import annotations

HELP = "Export images as packed token shards."

from revq.cli._tokenizer_args import add_model_arguments, tokenizer_and_images


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, nargs="+", help="images: folder, tar shards, files or a .txt list")
    parser.add_argument("--out", required=True, help="export directory (resumed when it holds a partial export)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--flip", action="store_true", help="also export the horizontal mirror of every image")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10000, help="images per shard")
    parser.add_argument("--model-id", default=None, help="identity recorded in the manifest (default: --model)")
    parser.add_argument("--restart", action="store_true", help="discard an existing export in --out")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from revq.tokens import export_tokens

    tokenizer, source = tokenizer_and_images(args, args.data)
    manifest = export_tokens(
        tokenizer,
        source,
        args.out,
        model_id=args.model_id or str(args.model),
        sources=[str(p) for p in source.inputs],
        flip=args.flip,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        total=source.estimated_count(),
        progress=not args.no_progress,
        resume=not args.restart,
    )
    print(
        f"{manifest['num_images']} images -> {manifest['token_count']} tokens "
        f"({manifest['dtype']}) in {len(manifest['shards'])} shard(s) at {args.out}"
    )
    if source.skipped:
        print(f"inputs: {source.summary()}")
    return 0
