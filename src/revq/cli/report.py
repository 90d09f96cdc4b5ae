"""``revq report``: a self-contained HTML page for a run directory."""

from __future__ import annotations

from pathlib import Path

HELP = "Write a self-contained HTML report for a run directory."


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="run directory of `revq train` (metrics.jsonl, model/, eval.json ...)")
    parser.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    parser.add_argument("--data", nargs="+", default=None,
                        help="images to evaluate and reconstruct when the run has no eval.json / reconstructions.png")
    parser.add_argument("--limit", type=int, default=500, help="images evaluated with --data (default 500)")
    parser.add_argument("--grid-images", type=int, default=8, help="rows of the reconstruction grid with --data")
    parser.add_argument("--vae-weights", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--vae-dtype", default="float32")


def run(args) -> int:
    from revq.errors import RevqError
    from revq.report import EVAL_FILE, GRID_FILE, write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise RevqError(f"{run_dir} is not a directory")
    if args.data:
        from revq.cli._tokenizer_args import load_tokenizer
        from revq.cli.reconstruct import write_reconstructions
        from revq.data.images import open_image_source
        from revq.evaluation import evaluate
        from revq.io_utils import write_json_atomic

        if not (run_dir / "model" / "config.json").is_file():
            raise RevqError(f"{run_dir}/model holds no trained model; --data needs one")
        args.model = str(run_dir / "model")
        tokenizer = load_tokenizer(args)
        if not (run_dir / EVAL_FILE).is_file():
            source = open_image_source(args.data, resolution=tokenizer.resolution, limit=args.limit)
            result = evaluate(tokenizer, source, extra_metrics=(), progress=True, total=source.estimated_count(),
                              protocol={"data": [str(p) for p in source.inputs]})
            write_json_atomic(run_dir / EVAL_FILE, result)
        if not (run_dir / GRID_FILE).is_file():
            source = open_image_source(args.data, resolution=tokenizer.resolution, limit=args.grid_images)
            write_reconstructions(tokenizer, source, run_dir, triplets=False)
    path = write_report(run_dir, args.out)
    print(f"report written to {path}")
    return 0
