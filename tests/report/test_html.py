"""``eigenarch report``: one self-contained page, every plot and table, rendered by Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shlex
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from eigenarch.report.dynamics import load_dynamics
from eigenarch.widths import resnet_cost

SPEC = {
    "widths": [32, 16, 32, 16, 48, 16, 64, 32, 64],
    "depths": [3, 4, 6, 3],
    "omega": 1.25,
    "intrinsic": {"conv1": 7, "layer1.0.conv1": 5},
    "source": {"command": "by hand"},
}
FIGURES = [
    "A-dims",
    "A-spectra",
    "A-width-diagram",
    "B-dims",
    "B-spectra",
    "B-width-diagram",
    "width-specs-diagram",
    "A-vs-B-stages",
]
TABLES = [
    f"{run}-{t}"
    for run in "AB"
    for t in ("settings", "events", "stages-part", "stages-stage", "widths")
]
TABLES += ["width-specs-table", "A-vs-B-part", "A-vs-B-stage", "A-vs-B-top"]


@pytest.fixture(scope="module")
def report(analysed_runs, tmp_path_factory):
    """The report over runs A and B (and a width spec), written once for this module."""
    from eigenarch.cli.app import main

    out = tmp_path_factory.mktemp("report")
    spec = out.parent / "spec.json"
    spec.write_text(json.dumps(SPEC))
    with pytest.raises(SystemExit) as done:
        main(
            [
                "report",
                str(analysed_runs["A"]),
                str(analysed_runs["B"]),
                "--out",
                str(out),
                "--multiple",
                "8",
                "--widths",
                str(spec),
                "--stages",
                "layer1,layer4",
            ]
        )
    assert done.value.code == 0
    return out


def test_report_files_and_summary(report, analysed_runs):
    page = (report / "report.html").read_text(encoding="utf-8")
    summary = json.loads((report / "report.json").read_text())
    assert summary["figures"] == FIGURES and summary["tables"] == TABLES
    for ident in FIGURES:
        assert (report / "plots" / f"{ident}.png").is_file()
        assert (report / "plots" / f"{ident}.svg").is_file()
        assert f'<figure id="{ident}">' in page
    for ident in TABLES:
        assert f'<table id="{ident}">' in page
    # Self-contained: every image is embedded; nothing is fetched.
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert len(sources) == len(FIGURES)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            assert image.format == "PNG"
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    # Commands and settings that produced it.
    assert "eigenarch report " in page and "--multiple 8" in page
    assert "eigenarch train --data" in page and "--backbone 8,8,16,8,16,8,16,8,16" in page
    assert load_dynamics(analysed_runs["A"]).command in page.replace("&#x27;", "'")
    # The events of run A, and its searched widths with their MACs / params.
    events = summary["runs"]["A"]["dynamics"]["events"]
    target = [e for e in events if e["map"] == "backbone.body.layer1.0.conv3:out"]
    assert [(e["kind"], e["iteration"]) for e in target] == [("dropping", 10), ("rebounding", 30)]
    search = summary["runs"]["A"]["search"]
    assert set(search) == {"macs", "params"}
    for metric, result in search.items():
        cost = resnet_cost(result["widths"], result["depths"])
        assert (result["macs"], result["params"]) == (cost.macs, cost.params)
        assert result[metric] <= resnet_cost((8, 8, 16, 8, 16, 8, 16, 8, 16)).metric(metric)
        assert all(w % 8 == 0 for w in result["widths"])
        row = " ".join(f"<td>{w}</td>" for w in result["widths"]).replace(" ", "")
        assert row in page and f"{cost.macs / 1e9:.3f}" in page
    assert "<td>spec.json</td>" in page
    assert summary["comparisons"][0]["names"] == ["A", "B"]
    # The widths the greedy fill grew past 2 x R(omega x adjusted), named in the last column.
    (table,) = re.findall(r'<table id="A-widths">(.*?)</table>', page)
    assert "<th>past 2 x ideal width</th>" in table
    for metric, result in search.items():
        q = result["multiple"]
        ideal = [max(q, q * math.floor(result["omega"] * a / q + 0.5)) for a in result["adjusted"]]
        expected = [
            f"{tie} {width} (ideal {i})"
            for tie, width, i in zip(result["ties"], result["widths"], ideal, strict=True)
            if tie not in result["fixed"] and width > 2 * i
        ]
        assert result["inflated"] == expected
        (row,) = re.findall(rf"<tr><td>searched \({metric} of base\)</td>(.*?)</tr>", table)
        assert row.endswith(f"<td>{html.escape(', '.join(expected))}</td>")


def test_report_search_commands_reproduce_its_widths(report, run_cli, tmp_path):
    summary = json.loads((report / "report.json").read_text())
    page = (report / "report.html").read_text(encoding="utf-8")
    for result in summary["runs"]["A"]["search"].values():
        assert html.escape(result["command"]) in page
        args = shlex.split(result["command"])[1:]
        args[args.index("--out") + 1] = str(tmp_path / "spec.json")
        r = run_cli(*args)
        assert r.code == 0, r.stderr
        assert json.loads((tmp_path / "spec.json").read_text())["widths"] == result["widths"]


def _chromium():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "chromium / chromedriver not found: `make browser` installs the Debian "
            "packages chromium and chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
        "--window-size=1300,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_report_renders_in_headless_chromium(report, tmp_path):
    # Only the page, away from its plots/ folder: it must still show everything.
    page = shutil.copy(report / "report.html", tmp_path / "moved.html")
    browser = _chromium()
    try:
        browser.get(f"file://{page}")
        state = browser.execute_script(
            "return {ready: document.readyState,"
            " images: [...document.images].map(i => [i.closest('figure').id, i.complete,"
            "                                        i.naturalWidth, i.naturalHeight]),"
            " tables: [...document.querySelectorAll('table')].map(t => [t.id,"
            "                                        t.getBoundingClientRect().height]),"
            " height: document.body.scrollHeight}"
        )
        assert state["ready"] == "complete"
        assert [i[0] for i in state["images"]] == FIGURES
        assert all(done and w > 100 and h > 100 for _, done, w, h in state["images"])
        assert [t[0] for t in state["tables"]] == TABLES
        assert all(height > 0 for _, height in state["tables"])
        browser.set_window_size(1300, min(state["height"] + 100, 16000))
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size[1] > 2000
        pixels = np.asarray(image.convert("L"))
    assert len(np.unique(pixels)) > 50 and (pixels < 128).mean() > 0.005  # drawn, not blank


def test_the_demos_tables_render_mean_std_and_p(tmp_path, analysed_runs):
    from eigenarch.errors import EigenarchError
    from eigenarch.report.html import RESULT_TABLES, Page, _result_section, write_report

    def row(label, top1, std, p):
        return {"backbone": label, "widths": [8, 16], "macs": 2.5e8, "params": 1.25e6,
                "seeds": 2, "top1_err": top1, "top1_err_std": std, "top1_err_p": p,
                "top5_err": None}  # fmt: skip

    page = Page(tmp_path, summary={})
    _result_section(page, "table2", [row("base", 20.04, 0.5, None), row("R", 25.5, None, 0.0123)])
    text = "".join(page.body)
    assert '<h2 id="table2">Transferred to classification (Table 2)</h2>' in text
    head = re.search(r"<thead>(.*?)</thead>", text).group(1)
    assert re.findall(r"<th>(.*?)</th>", head) == [
        "backbone", "widths", "MACs (G)", "params (M)", "seeds", "top-1 err", "top-5 err",
        "p (top-1 vs base)", "p (top-5 vs base)",
    ]  # fmt: skip
    assert (
        "<td>base</td><td>8,16</td><td>0.250</td><td>1.25</td><td>2</td><td>20.0 ± 0.5</td>" in text
    )
    assert "<td>25.5</td><td>n/a</td><td>0.012</td><td></td></tr>" in text
    assert page.summary["table2"][1]["top1_err_p"] == 0.0123
    assert list(RESULT_TABLES) == ["table1", "table1_1x", "table2", "mask"]
    with pytest.raises(EigenarchError, match="tables tabel2: expected table1, table1_1x"):
        write_report([analysed_runs["A"]], tmp_path / "out", tables={"tabel2": []})
    assert not (tmp_path / "out").exists()
