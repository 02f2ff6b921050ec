"""`subprof report` in a real browser: Debian's headless Chromium, driven by Playwright, loads the two reports of
issue 23 (one GPU per cell; GPU counts 1–16) and one with every measured section, and checks what a reader would
see: no JavaScript error, every figure drawn, no two text labels overlapping and none clipped by its cell or plot
area — in every plotly figure and in the fit matrix and decision tables, on screen and at the width of a printed
A4 landscape page — and every in-page link landing on a section. Screenshots and PDFs are written to
reports/screenshots/ (git-ignored) for a person to look at.

Bounding boxes come from the DOM: for plotly, the SVG text elements inside each figure's main svgs against the
figure, the plot area (`_fullLayout._size`) and, for heatmaps, one cell; for the HTML tables, each line box of
each label (`getClientRects`) against its cell and the other labels of the cell.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from subprof.catalog import profiles_dir
from subprof.cli import app

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "reports" / "screenshots"
MEASURED = profiles_dir() / "measured"
SCREEN = {"width": 1400, "height": 900}
PRINT_WIDTH = 1032  # CSS px across A4 landscape less the page's 12 mm margins: (297 − 24) mm × 96 / 25.4

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at "
                                                              "/usr/bin/chromium: apt-get install -y chromium")

REPORTS = {
    "one-gpu": ["--models", "1b,7b", "--gpus", "4090,a100-80gb,h100-sxm,l40s", "--tokens", "10B"],
    "gpu-count": ["--models", "1b,7b", "--gpus", "h100-sxm,a100-80gb,l40s,4090", "--gpus-per-node", "1,8",
                  "--nodes", "1,2", "--tokens", "10B"],
    "measured": ["--models", "60m", "--gpus", "4090", "--tokens", "1B",
                 "--bench", str(MEASURED / "trace_2.15.0.jsonl"), "--bench", "{over_budget}",
                 "--proj", str(MEASURED / "proj_cpu_2026-11-23.jsonl"),
                 "--burst", str(MEASURED / "burst_cpu_2026-12-01.jsonl"),
                 "--probe", str(MEASURED / "probe_cpu_tiny_2026-12-01.jsonl")],
}

# Every problem a reader would see, as one line each; [] when the page reads cleanly.
CHECK = """() => {
  const problems = [], PAD = 1;
  const box = (el) => el.getBoundingClientRect();
  const shown = (el) => {
    const r = box(el);
    if (r.width < 1 || r.height < 1 || !(el.textContent || "").trim()) return false;
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === "none" || s.visibility === "hidden" || Number(s.opacity) === 0) return false;
    }
    return true;
  };
  const overlap = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > PAD &&
                            Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > PAD;
  const inside = (a, o) => a.left >= o.left - PAD && a.right <= o.right + PAD && a.top >= o.top - PAD &&
                           a.bottom <= o.bottom + PAD;
  const name = (el) => JSON.stringify((el.textContent || "").trim().slice(0, 70));
  for (const gd of document.querySelectorAll(".js-plotly-plot")) {
    const svgs = gd.querySelectorAll("svg.main-svg"), fig = box(svgs[0]), s = gd._fullLayout._size;
    const area = {left: fig.left + s.l, top: fig.top + s.t, right: fig.left + s.l + s.w, bottom: fig.top + s.t + s.h};
    const heat = gd._fullData.find((d) => d.type === "heatmap");
    const texts = [];
    for (const svg of svgs) for (const t of svg.querySelectorAll("text")) if (shown(t)) texts.push(t);
    for (const t of texts) {
      const r = box(t);
      if (!inside(r, fig)) problems.push(`${gd.id}: ${name(t)} is clipped by the figure`);
      if (t.closest(".textpoint, .bartext, .heatmaplayer, .trace") && !inside(r, area))
        problems.push(`${gd.id}: data label ${name(t)} leaves the plot area`);
      if (heat && t.closest(".heatmaplayer")) {
        const w = s.w / heat.z[0].length, h = s.h / heat.z.length;
        if (r.width > w + PAD || r.height > h + PAD)
          problems.push(`${gd.id}: ${name(t)} (${r.width.toFixed(0)}×${r.height.toFixed(0)} px) exceeds its cell ` +
                        `(${w.toFixed(0)}×${h.toFixed(0)} px)`);
      }
    }
    for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++)
      if (overlap(box(texts[i]), box(texts[j])))
        problems.push(`${gd.id}: ${name(texts[i])} overlaps ${name(texts[j])}`);
    for (const ax of ["x", "y"]) {  // a log axis reads as numbers rising along it, not "5, 2, 100, 5, 2, 10"
      if ((gd._fullLayout[ax + "axis"] || {}).type !== "log") continue;
      const ticks = Array.from(gd.querySelectorAll(`.${ax}tick text`)).filter(shown)
        .map((t) => [ax === "x" ? box(t).left : -box(t).top, Number(t.textContent.replace(/,/g, ""))])
        .sort((p, q) => p[0] - q[0]).map((p) => p[1]);
      if (ticks.some((v, i) => Number.isNaN(v) || (i > 0 && v <= ticks[i - 1])))
        problems.push(`${gd.id}: the log ${ax} axis reads ${ticks.join(", ")}`);
    }
  }
  for (const table of document.querySelectorAll("table.fitgrid, table.pick")) {
    const where = table.className;
    for (const cell of table.querySelectorAll("td, th")) {
      if (cell.scrollWidth > cell.clientWidth + PAD) problems.push(`${where}: ${name(cell)} overflows its cell`);
      const lines = [];
      for (const part of cell.querySelectorAll(".label, .tag, b, small")) if (shown(part))
        for (const r of part.getClientRects()) lines.push([part, r]);
      for (const [part, r] of lines)
        if (!inside(r, box(cell))) problems.push(`${where}: ${name(part)} leaves its cell`);
      for (let i = 0; i < lines.length; i++) for (let j = i + 1; j < lines.length; j++) {
        const [a, ra] = lines[i], [b, rb] = lines[j];
        if (!a.contains(b) && !b.contains(a) && overlap(ra, rb))
          problems.push(`${where}: ${name(a)} overlaps ${name(b)}`);
      }
    }
  }
  for (const a of document.querySelectorAll('a[href^="#"]')) {
    const target = a.getAttribute("href").slice(1);
    if (!document.getElementById(target)) problems.push(`link #${target} has no target`);
  }
  return problems;
}"""

DRAWN = """() => [Number(document.body.dataset.figures),
  Array.from(document.querySelectorAll(".js-plotly-plot")).filter((d) => d.querySelector(".main-svg")).length]"""
PRINT = """async () => {
  window.dispatchEvent(new Event("beforeprint"));
  await Promise.all(Array.from(document.querySelectorAll(".js-plotly-plot"), (gd) => Plotly.Plots.resize(gd)));
}"""


def over_budget_rows(path: Path) -> Path:
    """Two committed trace rows as `bench --budget` writes rows measured to the end and judged over the budget."""
    rows = [json.loads(line) for line in (MEASURED / "trace_2.15.0.jsonl").read_text().splitlines()[:2]]
    path.write_text("".join(json.dumps({**r, "status": "oom", "oom_phase": "forward_backward",
                                        "budget_device_used_bytes": r["peak_allocated_bytes"] + 2**30}) + "\n"
                            for r in rows))
    return path


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module", params=list(REPORTS))
def seen(request, browser, tmp_path_factory) -> dict:
    """Build one report with the CLI, load it, and record what the browser saw on screen and at print width."""
    name, folder = request.param, tmp_path_factory.mktemp("report")
    args = [a.replace("{over_budget}", str(over_budget_rows(folder / "over.jsonl"))) for a in REPORTS[name]]
    out = folder / f"{name}.html"
    res = CliRunner().invoke(app, ["report", *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = browser.new_page(viewport=SCREEN)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(out.as_uri(), wait_until="load")
    seen = {"errors": errors, "drawn": page.evaluate(DRAWN), "screen": page.evaluate(CHECK),
            "page_text": page.inner_text("body")}
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)
    page.set_viewport_size({"width": PRINT_WIDTH, "height": SCREEN["height"]})
    page.emulate_media(media="print")
    page.evaluate(PRINT)
    seen["print"] = page.evaluate(CHECK)
    page.pdf(path=SHOTS / f"{name}.pdf", prefer_css_page_size=True, print_background=True)
    seen["errors_after_print"] = list(errors)
    page.close()
    return seen | {"name": name}


def test_no_javascript_error(seen):
    assert seen["errors_after_print"] == [], seen["errors_after_print"]


def test_every_figure_is_drawn(seen):
    expected, drawn = seen["drawn"]
    assert expected == drawn > 0


def test_no_label_overlaps_or_is_clipped_on_screen(seen):
    assert [p for p in seen["screen"] if not p.startswith("link")] == []


def test_no_label_overlaps_or_is_clipped_at_print_width(seen):
    assert [p for p in seen["print"] if not p.startswith("link")] == []


def test_every_link_lands_on_a_section(seen):
    assert [p for p in seen["screen"] if p.startswith("link")] == []


def test_sections_without_data_are_left_out_and_named_once(seen):
    text = seen["page_text"]
    assert "Not given" not in text and text.count("Not in this report:") == 1
    absent = text.split("Not in this report:")[1].splitlines()[0]
    if seen["name"] == "measured":
        assert "several GPUs per job" in absent and "--bench" not in absent and "--probe" not in absent
    else:
        assert "--bench FILE" in absent and "--probe FILE" in absent
        assert ("several GPUs" in absent) == (seen["name"] == "one-gpu")


def test_screenshots_and_pdfs_are_written_for_a_person(seen):
    for suffix, magic in ((".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF")):
        path = SHOTS / f"{seen['name']}{suffix}"
        assert path.read_bytes()[:len(magic)] == magic and path.stat().st_size > 20_000
