"""``revq detokenize``: turn token shards back into PNG images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from revq.cli._tokenizer_args import add_model_arguments, load_tokenizer, safe_name

HELP = "Turn a token shard back into images."


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--tokens", required=True, help="token export directory or one tokens-NNNNN.npy shard")
    parser.add_argument("--out", required=True, help="folder for the PNG images")
    parser.add_argument("--shard", type=int, default=None, help="only this shard of an export directory")
    parser.add_argument("--limit", type=int, default=None, help="first N samples only")
    parser.add_argument("--batch-size", type=int, default=64)


def _load(args) -> tuple[np.ndarray, list[str]]:
    import json

    from revq.errors import RevqError
    from revq.tokens import TokenShards

    path = Path(args.tokens)
    if path.is_file() and path.suffix == ".npy":
        tokens = np.load(path, mmap_mode="r")
        keys_file = path.with_name(path.name.replace("tokens-", "keys-")).with_suffix(".json")
        keys = json.loads(keys_file.read_text()) if keys_file.is_file() else [f"{i:06d}" for i in range(len(tokens))]
        return tokens, keys
    if not path.is_dir():
        raise RevqError(f"--tokens {path}: no such export directory or .npy shard")
    shards = TokenShards(path)
    indices = range(shards.num_shards) if args.shard is None else [args.shard]
    if args.shard is not None and not 0 <= args.shard < shards.num_shards:
        raise RevqError(f"--shard {args.shard}: the export has {shards.num_shards} shard(s)")
    tokens = np.concatenate([np.asarray(shards.shard(i)) for i in indices]) if shards.num_shards else np.zeros((0, 0))
    keys = [k for i in indices for k in shards.shard_keys(i)]
    return tokens, keys


def run(args) -> int:
    import torch
    from PIL import Image

    tokens, keys = _load(args)
    if args.limit is not None:
        tokens, keys = tokens[: args.limit], keys[: args.limit]
    tokenizer = load_tokenizer(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for start in range(0, len(tokens), args.batch_size):
        batch = torch.from_numpy(np.asarray(tokens[start : start + args.batch_size]).astype(np.int64))
        images = tokenizer.decode(batch)
        for key, image in zip(keys[start : start + args.batch_size], images):
            array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(array).save(out / f"{written:06d}_{safe_name(key)}.png")
            written += 1
    print(f"{written} images written to {out}")
    return 0
