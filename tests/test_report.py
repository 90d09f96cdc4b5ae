"""The HTML report: self-contained, every section present, renders in headless Chromium."""

import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

from revq.report import build_report_html, collect_series, read_metrics, write_report


def _fake_run(tmp_path, *, with_eval=True, with_grid=True):
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for step in range(1, 21):
        lines.append(json.dumps({"kind": "train", "step": step, "epoch": step // 10, "loss": 1.0 / step, "quant_loss": 0.5 / step}))
        if step % 10 == 0:
            lines.append(json.dumps({"kind": "val", "step": step, "epoch": step // 10, "val_latent_mse": 0.3, "usage": 0.5 + step / 100}))
    lines.append('{"kind": "train", "step": 21, "loss"')  # truncated by a kill
    (run / "metrics.jsonl").write_text("\n".join(lines))
    if with_eval:
        result = {"num_images": 7, "psnr": 20.5, "psnr_y": 22.0, "ssim": 0.61, "latent_mse": 0.2,
                  "usage": 0.8, "usage_min_group": 0.5, "usage_per_group": [0.5, 0.9, 1.0, 0.75],
                  "perplexity": 3.2, "bits_per_image": 16.0, "baseline_psnr": 22.0, "baseline_ssim": 0.7,
                  "lpips": None, "rfid": None, "unavailable": {"lpips": "LPIPS is unavailable. <needs weights>"},
                  "protocol": {"resolution": 16, "count": 7}}
        (run / "eval.json").write_text(json.dumps(result))
    if with_grid:
        Image.new("RGB", (40, 60), (200, 30, 30)).save(run / "reconstructions.png")
    (run / "config.json").write_text('{"epochs": 2, "note": "<b>escaped</b>"}')
    return run


def test_metrics_parsing_ignores_truncated_line(tmp_path):
    run = _fake_run(tmp_path)
    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == 22
    plots = collect_series(records)
    assert "train/loss" in plots["loss"] and "val_latent_mse" in plots["loss"]
    assert plots["usage"]["val/usage"][0] == [10, 20]


def test_report_is_self_contained(tmp_path):
    run = _fake_run(tmp_path)
    path = write_report(run)
    text = path.read_text()
    assert path == run / "report.html"
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(srcs) == 4  # loss, usage, histogram, grid
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text
    assert "20.5000" in text and "PSNR cost of quantization" in text
    assert "&lt;needs weights&gt;" in text and "&lt;b&gt;escaped" in text


def test_report_with_nothing_but_an_empty_dir(tmp_path):
    text = build_report_html(tmp_path)
    assert "no metrics.jsonl" in text and "no eval.json" in text and "<img" not in text


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var d = document.createElement('div'); d.id = 'imgcheck';
  d.setAttribute('data-ok', ok); d.setAttribute('data-total', imgs.length);
  d.setAttribute('data-h2', document.querySelectorAll('h2').length);
  document.body.appendChild(d);
});
</script></body>"""


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium chromium-driver)")
    run = _fake_run(tmp_path)
    report = write_report(run)
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _CHECK))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    match = re.search(r'id="imgcheck" data-ok="(\d+)" data-total="(\d+)" data-h2="(\d+)"', proc.stdout)
    assert match, f"no render result; stderr: {proc.stderr[-2000:]}"
    ok, total, h2 = map(int, match.groups())
    assert total == 4 and ok == total
    assert h2 == 4
    shot = tmp_path / "shot.png"
    subprocess.run([*cmd[:-2], f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
                   capture_output=True, timeout=90)
    if shot.exists():
        with Image.open(shot) as im:
            assert im.size[0] > 100 and len(im.convert("L").histogram()) and sum(1 for c in im.convert("L").histogram() if c) > 10  # not blank
