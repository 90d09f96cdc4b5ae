"""The paper's ablations at CPU scale (issue #6), one command each, same compute budget per arm.

    python experiments/ablations.py split       [--budget-cpu-s 120] [--seed 0] [--psnr-limit 0]
    python experiments/ablations.py reset
    python experiments/ablations.py rectifier
    python experiments/ablations.py pre_encoder
    python experiments/ablations.py objective

Every arm is a budgeted run of experiments/recipe_ab.py (same harness, same data, same seed;
see its docstring for the budget in process-CPU seconds and the metrics), starting from the
chosen CPU recipe (``--base cpu-512t``: the preset's defaults; token count and overrides per arm).
Results: experiments/results/ablations.jsonl and one table per ablation in docs/results.md.

Paper references (ImageNet, DC-AE, full training) for the side-by-side tables in docs/results.md:
split (Table 4, rFID: channel < spatial at 512 and 256 tokens), reset (Fig. 8: usage >= 97 % with
reset, 65.3 % without), rectifier (Table 5 / Fig. 9: ViT best; -23.3 % loss at 64 tokens),
pre-encoder (Table 6: hurts badly), objective (the authors' code trains "decoupled").
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recipe_ab  # noqa: E402

NO_RECT = ["model.rectifier.kind=none"]

ABLATIONS: dict[str, list[tuple[str, int, list[str]]]] = {
    # quantizer only (the split is a quantizer property; no rectifier keeps arms cheap and clean)
    "split": [(f"{split}-{t}", t, NO_RECT + [f"model.split={split}"])
              for t in (512, 256) for split in ("channel", "spatial", "single")],
    # reset every epoch vs never, as the codebook grows (quantizer only).  The reset acts at epoch
    # ends, so run it on a small train cache (--train, e.g. 8,192 latents: an epoch is 64 steps)
    # and count usage on many val latents (--val-limit 10000).
    "reset": [(f"{'reset' if r else 'no-reset'}-N{n}", 512, NO_RECT + [f"model.codebook_size={n}", f"reset_every_epochs={r}"])
              for n in (256, 1024, 4096) for r in (1, 0)],
    # rectifier kinds at two token counts
    "rectifier": [(f"{kind}-{t}", t, [f"model.rectifier.kind={kind}"] + extra)
                  for t in (512, 128)
                  for kind, extra in (("efficientvit", []), ("cnn", ["model.rectifier.width=128"]),
                                      ("mlp", ["model.rectifier.mlp_hidden=1024"]), ("none", []))],
    "pre_encoder": [("no-encoder-512", 512, []), ("pre-encoder-512", 512, ["model.pre_encoder=true"])],
    "objective": [("decoupled-512", 512, ["model.objective=decoupled"]), ("paper-512", 512, ["model.objective=paper"])],
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ABLATIONS and argv[0] not in ("-h", "--help"):
        print(__doc__)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    which, rest = argv[0], argv[1:]
    only = None
    if "--only" in rest:  # run a subset of arms: --only name1,name2
        i = rest.index("--only")
        only = set(rest[i + 1].split(","))
        rest = rest[:i] + rest[i + 2:]
    root = recipe_ab.ROOT
    for name, tokens, overrides in ABLATIONS[which]:
        if only and name not in only:
            continue
        args = ["--name", name, "--tokens", str(tokens), "--base", f"cpu-{tokens}t" if tokens in (512, 256) else "cpu-256t",
                "--group", f"ablation-{which}", "--jsonl", str(root / "experiments/results/ablations.jsonl"),
                *rest, "--set", *overrides]
        if tokens not in (512, 256):
            args += [f"model.num_tokens={tokens}"]
        recipe_ab.main(args, group_default=f"ablation-{which}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
