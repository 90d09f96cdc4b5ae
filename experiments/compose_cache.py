"""Stitch a latent cache from the committed shards of an unfinished cache plus a second cache
encoded in parallel from the remaining shards of the same source (used once, to start the
A/B arms before the canonical 30k cache finished; same encoder, same images, same order).

    python experiments/compose_cache.py HEAD_CACHE TAIL_CACHE TAIL_OFFSET OUT [--total N]

HEAD_CACHE: cache folder with committed shards (images 0..K-1); TAIL_CACHE: finished cache of the
source images from TAIL_OFFSET on; OUT gets images 0..N-1 with fresh statistics.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    head, tail, offset, out = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    total = int(sys.argv[sys.argv.index("--total") + 1]) if "--total" in sys.argv else 30000
    from _train_helpers import write_cache
    from revq.data.latent_cache import LatentCache
    from revq.io_utils import write_json_atomic

    parts, keys, labels = [], [], []
    i = 0
    while (head / "shards" / f"latents-{i:05d}.npy").exists() and (head / "shards" / f"keys-{i:05d}.json").exists():
        parts.append(np.load(head / "shards" / f"latents-{i:05d}.npy"))
        keys += json.loads((head / "shards" / f"keys-{i:05d}.json").read_text())
        labels.append(np.load(head / "shards" / f"labels-{i:05d}.npy"))
        i += 1
    have = sum(len(p) for p in parts)
    t = LatentCache(tail)
    skip = have - offset
    assert 0 <= skip <= len(t), (have, offset, len(t))
    parts.append(t.all().numpy()[skip:])
    keys += t.keys[skip:]
    labels.append(t.labels[skip:])
    data = np.concatenate(parts)[:total]
    write_cache(out, data, autoencoder="taef2", shard_size=4096)
    np.save(out / "labels.npy", np.concatenate(labels)[:total].astype(np.int64))
    write_json_atomic(out / "keys.json", keys[:total])
    m = json.loads((out / "manifest.json").read_text())
    m.update({"resolution": 64, "composed_from": [str(head), str(tail)], "count": len(data)})
    write_json_atomic(out / "manifest.json", m)
    print(f"{len(data)} latents -> {out} ({have} from {head}, {len(data) - have} from {tail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
