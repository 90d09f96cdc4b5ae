"""``revq plan``: parameter counts and memory of a preset before training."""

from __future__ import annotations

import argparse
import json

HELP = "Print parameter counts and memory of a preset before training."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from revq.training.presets import list_presets

    parser.add_argument("--preset", help=f"named preset: {', '.join(list_presets())}")
    parser.add_argument("--config", help="a train_config.json instead of a preset")
    parser.add_argument("--batch-size", type=int, help="global batch size (default: the preset's)")
    parser.add_argument("--nproc", type=int, default=1, help="processes the batch is split over (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def run(args: argparse.Namespace) -> int:
    from revq.config import apply_overrides
    from revq.errors import ConfigError
    from revq.training.config import TrainConfig
    from revq.training.planner import plan
    from revq.training.presets import get_preset, list_presets

    if args.list:
        for name, desc in list_presets().items():
            print(f"{name:<14} {desc}")
        return 0
    if args.preset:
        cfg = get_preset(args.preset)
    elif args.config:
        cfg = TrainConfig.from_json(args.config)
    else:
        raise ConfigError(f"choose a preset with --preset NAME ({', '.join(list_presets())}) or give --config FILE")
    apply_overrides(cfg, args.overrides)
    if args.nproc < 1:
        raise ConfigError("--nproc must be >= 1")
    result = plan(cfg, batch_size=args.batch_size, world_size=args.nproc)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0
