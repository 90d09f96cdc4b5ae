"""A self-contained HTML report of a training run (every image inline as base64 PNG).

Sections: training curves (losses, usage) from ``RUN_DIR/metrics.jsonl``, a per-group usage
histogram, a reconstruction grid (original | VAE | ReVQ), the evaluation metrics table and the
run's configuration.  Inputs it looks for in the run directory (all optional; a missing one
becomes a note in the page, never an error):

- ``metrics.jsonl``            one JSON object per line (training/validation records)
- ``eval.json``                :func:`revq.evaluation.evaluate` output (``revq eval --out``)
- ``reconstructions.png``      a grid (``revq reconstruct`` / the demo)
- ``model/``                   the saved model (its activation counts as a usage fallback)
- ``config.json`` / ``train_config.json``  shown verbatim

``write_report(run_dir)`` writes ``RUN_DIR/report.html`` and returns its path.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

EVAL_FILE = "eval.json"
GRID_FILE = "reconstructions.png"
REPORT_FILE = "report.html"
METRICS_FILE = "metrics.jsonl"

_KIND_FIELDS = ("kind", "type", "split", "event", "phase", "stage")
_X_FIELDS = ("step", "global_step", "epoch")


def read_metrics(path: str | Path) -> list[dict]:
    """JSON lines -> list of dicts (a truncated last line, from a killed run, is ignored)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            records.append(item)
    return records


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def collect_series(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """Group numeric fields into plots: {"loss": {name: (xs, ys)}, "usage": {...}}."""
    plots: dict[str, dict[str, tuple[list, list]]] = {"loss": {}, "usage": {}}
    for index, rec in enumerate(records):
        kind = next((str(rec[f]) for f in _KIND_FIELDS if isinstance(rec.get(f), str)), "")
        x_field = next((f for f in _X_FIELDS if _is_number(rec.get(f))), None)
        x = rec[x_field] if x_field else index
        for key, value in rec.items():
            if key in _X_FIELDS or not _is_number(value):
                continue
            lower = key.lower()
            if "loss" in lower or "mse" in lower:
                group = "loss"
            elif "usage" in lower or "perplexity" in lower:
                group = "usage"
            else:
                continue
            name = f"{kind}/{key}" if kind and not key.startswith(kind) else key
            xs, ys = plots[group].setdefault(name, ([], []))
            xs.append(x)
            ys.append(value)
    return plots


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plot_series(series: dict[str, tuple[list, list]], title: str, ylabel: str, *, log_y: bool) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    positive = True
    for name, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None, markersize=3)
        positive &= all(y > 0 for y in ys)
    if log_y and positive:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step / epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _figure_png(fig)


def _plot_usage_histogram(per_group, source: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    values = [float(v) for v in per_group]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.hist(values, bins=min(40, max(5, len(values) // 4)), range=(0, 1), color="#4472c4")
    ax1.set_xlabel("fraction of the group's codes used")
    ax1.set_ylabel("groups")
    ax1.set_title(f"per-group usage ({source})")
    ax2.bar(range(len(values)), values, width=1.0, color="#4472c4")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("token position (group)")
    ax2.set_ylabel("usage")
    ax2.set_title("usage by position")
    return _figure_png(fig)


def _model_usage(model_dir: Path):
    """Per-group usage from a saved model's activation counts (None when absent or all zero)."""
    path = model_dir / "model.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = [k for k in handle.keys() if k.endswith("counts")]
            if not keys:
                return None
            counts = handle.get_tensor(keys[0])
    except Exception:
        return None
    if counts.dim() != 2 or int(counts.sum()) == 0:
        return None
    return (counts > 0).double().mean(1).tolist()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    if value is None:
        return "n/a"
    return html.escape(str(value))


_TABLE_KEYS = [
    ("num_images", "images evaluated"),
    ("psnr", "PSNR RGB (dB)"),
    ("psnr_y", "PSNR Y (dB)"),
    ("ssim", "SSIM"),
    ("lpips", "LPIPS"),
    ("rfid", "rFID"),
    ("latent_mse", "latent MSE (normalised)"),
    ("baseline_psnr", "VAE-only PSNR RGB (dB)"),
    ("baseline_psnr_y", "VAE-only PSNR Y (dB)"),
    ("baseline_ssim", "VAE-only SSIM"),
    ("usage", "code usage (all codes)"),
    ("usage_min_group", "usage of the least-used group"),
    ("perplexity", "perplexity (mean over groups)"),
    ("num_tokens", "tokens per image"),
    ("codebook_size", "codes per position"),
    ("bits_per_image", "bits per image"),
]


def _metrics_table(result: dict) -> str:
    rows = []
    for key, label in _TABLE_KEYS:
        if key in result:
            rows.append(f"<tr><th>{html.escape(label)}</th><td>{_fmt(result[key])}</td></tr>")
    if result.get("baseline_psnr") is not None and result.get("psnr") is not None:
        gap = result["baseline_psnr"] - result["psnr"]
        rows.append(f"<tr><th>PSNR cost of quantization (dB)</th><td>{_fmt(gap)}</td></tr>")
    out = "<table>" + "".join(rows) + "</table>"
    for name, why in (result.get("unavailable") or {}).items():
        out += f'<p class="note">{html.escape(name)}: {html.escape(why)}</p>'
    protocol = result.get("protocol")
    if protocol:
        items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in protocol.items())
        out += f"<details><summary>protocol</summary><ul>{items}</ul></details>"
    return out


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; } th, td { border: 1px solid #ccc; padding: .25em .7em; }
th { text-align: left; background: #f4f4f4; font-weight: normal; } td { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; image-rendering: pixelated; }
.note { color: #666; font-style: italic; } pre { background: #f7f7f7; padding: .7em; overflow-x: auto; font-size: .8em; }
"""


def build_report_html(
    run_dir: str | Path,
    *,
    eval_result: dict | None = None,
    grid_png: bytes | None = None,
    title: str | None = None,
) -> str:
    run = Path(run_dir)
    parts: list[str] = []

    def img(png: bytes, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="{_png_data_uri(png)}">'

    def note(text: str) -> str:
        return f'<p class="note">{html.escape(text)}</p>'

    # ---------------------------------------------------------------- curves
    records = read_metrics(run / METRICS_FILE)
    parts.append("<h2>Training curves</h2>")
    if not records:
        parts.append(note(f"no {METRICS_FILE} in this run directory"))
    else:
        plots = collect_series(records)
        if plots["loss"]:
            parts.append(img(_plot_series(plots["loss"], "losses", "value", log_y=True), "loss curves"))
        else:
            parts.append(note("no loss values in the metrics"))
        if plots["usage"]:
            parts.append(img(_plot_series(plots["usage"], "codebook usage", "value", log_y=False), "usage curves"))
        else:
            parts.append(note("no usage values in the metrics"))

    # ---------------------------------------------------------------- eval + histogram
    if eval_result is None and (run / EVAL_FILE).is_file():
        eval_result = json.loads((run / EVAL_FILE).read_text())
    parts.append("<h2>Per-group code usage</h2>")
    per_group, source = None, ""
    if eval_result and eval_result.get("usage_per_group"):
        per_group, source = eval_result["usage_per_group"], "evaluation set"
    else:
        per_group = _model_usage(run / "model")
        source = "model's activation counts"
    if per_group:
        parts.append(img(_plot_usage_histogram(per_group, source), "per-group usage histogram"))
    else:
        parts.append(note("no per-group usage available (run `revq eval --out RUN_DIR/eval.json`)"))

    parts.append("<h2>Reconstructions (original | VAE | ReVQ)</h2>")
    if grid_png is None and (run / GRID_FILE).is_file():
        grid_png = (run / GRID_FILE).read_bytes()
    if grid_png:
        parts.append(img(grid_png, "reconstruction grid"))
    else:
        parts.append(note(f"no {GRID_FILE} (write one with `revq reconstruct --model RUN_DIR/model IMAGES --out RUN_DIR`)"))

    parts.append("<h2>Evaluation</h2>")
    parts.append(_metrics_table(eval_result) if eval_result else note(f"no {EVAL_FILE} in this run directory"))

    # ---------------------------------------------------------------- config
    for name in ("config.json", "train_config.json", "model/config.json"):
        path = run / name
        if path.is_file():
            parts.append(
                f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(path.read_text())}</pre></details>"
            )

    heading = html.escape(title or f"revq run: {run.resolve().name}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{heading}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{heading}</h1><p class=\"note\">{html.escape(str(run.resolve()))}</p>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    eval_result: dict | None = None,
    grid_png: bytes | None = None,
    title: str | None = None,
) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) and return its path."""
    from revq.io_utils import atomic_path

    run = Path(run_dir)
    path = Path(out) if out is not None else run / REPORT_FILE
    text = build_report_html(run, eval_result=eval_result, grid_png=grid_png, title=title)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
