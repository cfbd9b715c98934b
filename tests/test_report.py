"""The HTML report: every section with its charts, self-contained, and readable in a real browser."""

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import synth
from PIL import Image
from typer.testing import CliRunner

from polymodal import MultimodalPredictor
from polymodal.cli import app
from polymodal.evaluation.html import COLORS, SECTIONS
from polymodal.evaluation.report import model_report
from polymodal.studies.compare import compare

IGNORE = ["clip", "price", "shade", "score"]
# Charts each section must hold (at least): the leaderboard and per-class metrics are tables.
CHARTS = {"bar-chart": 1, "robustness": 1, "contribution": 2, "confusion-matrix": 1, "roc-curves": 1,
          "training-curves": 1}  # fmt: skip


class Page(HTMLParser):
    """Sections by id, with their images (decoded) and text; every external reference the page makes."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.external: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = {"images": [], "text": "", "tables": 0}
        for key in ("src", "href"):
            if key in a and not a[key].startswith("data:"):
                self.external.append(a[key])
        if tag in ("link", "script", "iframe", "object"):
            self.external.append(tag)
        if self.current and tag == "table":
            self.sections[self.current]["tables"] += 1
        if self.current and tag == "img":
            assert a["src"].startswith("data:image/png;base64,")
            png = base64.b64decode(a["src"].split(",", 1)[1], validate=True)
            self.sections[self.current]["images"].append(Image.open(io.BytesIO(png)).convert("RGB"))

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.sections[self.current]["text"] += data


def _check(page: Page, charts: dict[str, int] = CHARTS) -> None:
    assert list(page.sections) == list(SECTIONS)
    assert page.external == [], "the report must not load anything from outside the file"
    for sid, n in charts.items():
        images = page.sections[sid]["images"]
        assert len(images) >= n, (sid, len(images))
        for im in images:
            assert im.width > 200 and im.height > 150 and np.asarray(im).std() > 5, sid  # a drawn chart
    assert page.sections["leaderboard"]["tables"] == 1 and page.sections["per-class"]["tables"] == 1


@pytest.fixture(scope="module")
def compared(synth_split, tmp_path_factory):
    train, test = synth_split
    out = tmp_path_factory.mktemp("cmp_report")
    board = compare(train, "y", out, test=test, fusions=["late", "ensemble-average"], seeds=1, noise_levels=3,
                    permutations=1, ignore=IGNORE, **dict(synth.FAST, max_epochs=6))  # fmt: skip
    return out, board


def test_compare_report_has_every_section_and_chart(compared):
    out, board = compared
    page = Page((out / "report.html").read_text())
    _check(page)
    table = page.sections["leaderboard"]["text"]
    for r in board["leaderboard"]:
        assert r["entry"] in table
    robustness = page.sections["robustness"]["text"]
    assert "without caption" in robustness and "Gaussian blur" in robustness and "word dropout" in robustness
    best = board["leaderboard"][0]["entry"]
    assert f"{best} (rank 1)" in page.sections["confusion-matrix"]["text"]


def test_robustness_png_of_a_compare_and_of_one_without_noise(compared, tmp_path):
    import copy

    from PIL import Image

    from polymodal.studies.report import compare_robustness_png

    _, board = compared
    png = compare_robustness_png(board, tmp_path / "r.png")
    assert np.asarray(Image.open(png)).std() > 5  # drawn curves, not a blank canvas
    quiet = copy.deepcopy(board)
    for r in quiet["results"]:
        r["robustness"].pop("noise", None)  # as --noise-levels 0 leaves them
    assert compare_robustness_png(quiet, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_report_command_for_a_model_an_ensemble_and_a_compare_folder(compared, synth_split, tmp_path):
    out, _ = compared
    _, test = synth_split
    runner = CliRunner()
    for folder in (out / "models" / "late" / "seed0", out / "models" / "ensemble-average" / "seed0"):
        html = tmp_path / f"{folder.parent.name}.html"
        r = runner.invoke(app, ["report", str(folder), str(test), "-o", str(html), "--noise-levels", "2"])
        assert r.exit_code == 0, r.output
        page = Page(html.read_text())
        _check(page, dict(CHARTS, **{"training-curves": 0 if "ensemble" in folder.parent.name else 1}))
        assert "accuracy" in page.sections["leaderboard"]["text"]
    r = runner.invoke(app, ["report", str(out), "-o", str(tmp_path / "again.html")])
    assert r.exit_code == 0, r.output
    _check(Page((tmp_path / "again.html").read_text()))
    r = runner.invoke(app, ["report", str(out / "models" / "late" / "seed0"), "-o", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and "labelled table" in r.output


def test_regression_report_replaces_class_charts(synth_split):
    train, test = synth_split
    p = MultimodalPredictor(label="score", fusion="early", ignore=["clip", "price", "shade", "y"],
                            **dict(synth.FAST, max_epochs=4)).fit(train)  # fmt: skip
    page = Page(model_report(p.engine, test, name="regression", history=p.metrics_["history"], noise_levels=2))
    assert list(page.sections) == list(SECTIONS) and page.external == []
    assert "regression" in page.sections["roc-curves"]["text"] and not page.sections["roc-curves"]["images"]
    assert len(page.sections["confusion-matrix"]["images"]) == 1  # predicted against true instead
    assert "rmse" in page.sections["leaderboard"]["text"] and len(page.sections["robustness"]["images"]) == 1


def test_report_renders_in_headless_chromium(compared, tmp_path):
    """A real browser draws the file from disk: the screenshot is not blank and shows the charts' colours."""
    out, _ = compared
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           (out / "report.html").resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert pixels.std() > 20 and len(np.unique(pixels, axis=0)) > 100
    # The bar chart's first colour is drawn only by an embedded image, so images were decoded and shown.
    first = np.array([int(COLORS[0][i : i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels - first).sum(axis=1) < 40).sum() > 500
