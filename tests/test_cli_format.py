"""`--format table|json|csv|markdown` on the tabular commands: every format parses (csv with csv.reader, markdown has
its header separator line, json loads), `table` is the output without --format, `--json` is an alias of `--format
json`, and a bad or contradicting format is one line with exit code 2. `plan`, `estimate`, `models` and `gpus` run
as they are; `proj`, `burst` and `probe` run once on tiny cases and then `--resume` from their rows, `bench` with its
case runner faked (as tests/test_bench_sweep.py does)."""

from __future__ import annotations

import csv
import io
import json
import re
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from subprof.cli import app

FORMATS = ("table", "json", "csv", "markdown")
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")

FAST = {
    "plan": (["plan", "--model", "1b", "--gpu-mem", "24GB", "--top", "3"], "method"),
    "estimate": (["estimate", "--model", "1b", "--method", "galore", "--rank", "512"], "component"),
    "models": (["models"], "name"),
    "gpus": (["gpus"], "key"),
}


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def parsed(text: str, fmt: str):
    """The output in `fmt`, parsed: json → the object; csv → the rows (header first, equal widths); markdown → the
    header cells and the body lines (the second line is the header separator)."""
    if fmt == "json":
        return json.loads(text)
    lines = text.strip("\n").splitlines()
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert len({len(r) for r in rows}) == 1, rows
        return rows
    assert fmt == "markdown"
    assert len(lines) >= 2 and SEPARATOR.match(lines[1]), lines[:2]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert lines[1].count("|") == len(header) + 1
    assert all(ln.startswith("| ") and ln.endswith(" |") for ln in lines[2:])
    return header, lines[2:]


def check(res, fmt: str, first_column: str) -> None:
    assert res.exit_code == 0, res.output
    if fmt == "table":
        return
    out = parsed(res.stdout, fmt)
    if fmt == "csv":
        assert out[0][0] == first_column and len(out) >= 2
    elif fmt == "markdown":
        assert out[0][0] == first_column and out[1]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", list(FAST))
def test_each_command_prints_each_format(command, fmt):
    args, first_column = FAST[command]
    res = invoke(args + ["--format", fmt])
    check(res, fmt, first_column)
    if fmt == "table":  # today's rich output, unchanged
        assert res.stdout == invoke(args).stdout


@pytest.mark.parametrize("command", list(FAST))
def test_json_is_an_alias_of_format_json(command):
    args, _ = FAST[command]
    alias, named, both = (invoke(args + extra) for extra in (["--json"], ["--format", "json"],
                                                             ["--json", "--format", "JSON"]))
    assert alias.exit_code == named.exit_code == both.exit_code == 0
    assert alias.stdout == named.stdout == both.stdout
    json.loads(alias.stdout)


def test_plan_rows_put_the_recommendation_first_with_the_json_candidates_values():
    args = FAST["plan"][0]
    rec = json.loads(invoke(args + ["--json"]).stdout)["recommendation"]
    header, *rows = parsed(invoke(args + ["--format", "csv"]).stdout, "csv")
    assert header == ["method", "base", "rank", "update_gap", "state_bits", "layerwise", "batch", "accumulation",
                      "sequences_per_step", "checkpointing", "device_used_gib", "tokens_per_s", "predicted_gap_nats",
                      "predicted_ppl_increase", "quality_evidence"]
    first = dict(zip(header, rows[0]))
    assert (first["method"], first["base"], first["rank"], first["update_gap"]) == (
        rec["method"], rec["base"], str(rec["rank"]), str(rec["update_gap"]))
    assert float(first["device_used_gib"]) == pytest.approx(rec["device_used_bytes"] / 2**30, abs=1e-3)
    assert first["layerwise"] in ("true", "false") and len(rows) == 3


def test_plan_of_a_job_adds_the_strategy_and_nothing_fits_prints_the_header_and_exits_1():
    res = invoke(["plan", "--model", "7b", "--gpu", "h100-sxm", "--gpu-mem", "80GB", "--gpus", "8", "--top", "2",
                  "--format", "markdown"])
    header, body = parsed(res.stdout, "markdown")
    assert res.exit_code == 0 and header[:2] == ["method", "strategy"] and len(body) == 2
    res = invoke(["plan", "--model", "7b", "--gpu-mem", "0.5GB", "--format", "csv"])
    assert res.exit_code == 1 and parsed(res.stdout, "csv")[0][0] == "method" and len(parsed(res.stdout, "csv")) == 1


def test_estimate_rows_are_components_by_phases_with_the_total_last():
    header, *rows = parsed(invoke(FAST["estimate"][0] + ["--format", "csv"]).stdout, "csv")
    assert header[:2] == ["component", "size_gib"] and all(h.endswith("_gib") for h in header[1:])
    assert rows[0][0] == "weights" and rows[-1][0] == "total"


@pytest.mark.parametrize("extra", [["--format", "xml"], ["--format", ""]])
@pytest.mark.parametrize("command", list(FAST))
def test_an_unknown_format_is_one_line_naming_the_choices(command, extra):
    res = invoke(FAST[command][0] + extra)
    assert res.exit_code == 2 and res.stdout == ""
    assert len(res.output.strip().splitlines()) == 1
    assert all(name in res.output for name in FORMATS)


@pytest.mark.parametrize("command", list(FAST))
def test_json_with_another_format_is_one_line_and_exit_2(command):
    res = invoke(FAST[command][0] + ["--json", "--format", "csv"])
    assert res.exit_code == 2 and res.stdout == ""
    assert len(res.output.strip().splitlines()) == 1 and "--json" in res.output and "--format csv" in res.output


# --- commands that run torch: one tiny run each, the other formats from its rows (--resume) -----------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("torch")
    from subprof.train.corpus import load_corpus

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    folder = tmp_path_factory.mktemp("texts")
    for name in ("textwrap.py", "string.py", "bisect.py"):
        (folder / name).write_text((stdlib / name).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUBPROF_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_corpus(folder, vocab_size=320)


def each_format(args: list[str], first_column: str, expect_json) -> None:
    """The first format runs the work; the rest read it back with --resume."""
    for i, fmt in enumerate(("json", "csv", "markdown", "table")):
        res = invoke(args + ["--format", fmt] + (["--resume"] if i else []))
        check(res, fmt, first_column)
        if fmt == "json":
            assert expect_json(json.loads(res.stdout))
    assert invoke(args + ["--resume", "--json", "--format", "markdown"]).exit_code == 2


def test_proj_formats(tmp_path, one_thread):
    pytest.importorskip("torch")
    each_format(["proj", "--model", "tiny", "--ranks", "4", "--methods", "ori", "--shapes", "352x128", "--repeats",
                 "1", "--warmup", "0", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "p.jsonl")],
                "shape", lambda d: d["rows"])


def test_bench_formats(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from subprof.measure import runner

    monkeypatch.setattr(runner, "run_case", lambda case, timeout: {**case.row_fields(), "status": "ok",
                                                                   "peak_allocated_bytes": 1000})
    each_format(["bench", "--model", "tiny", "--methods", "galore", "--ranks", "16,32", "--batch", "2", "--seq",
                 "16", "--backend", "trace", "--out", str(tmp_path / "b.jsonl")], "model",
                lambda rows: [r["rank"] for r in rows] == [16, 32])


def test_burst_formats(corpus, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr("subprof.train.corpus.load_corpus", lambda *a, **k: corpus)
    each_format(["burst", "--methods", "adamw,ori", "--ranks", "8", "--update-gaps", "50", "--steps", "2", "--batch",
                 "2", "--seq", "32", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "b.jsonl")],
                "place", lambda d: d["rows"])


def test_probe_formats(corpus, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr("subprof.train.corpus.load_corpus", lambda *a, **k: corpus)
    each_format(["probe", "--model", "tiny", "--steps", "8", "--every", "4", "--gaps", "1,4", "--ranks", "4,16",
                 "--batch", "2", "--seq", "32", "--device", "cpu", "--threads", "1", "--out",
                 str(tmp_path / "probe.jsonl")], "type", lambda d: d["summary"])
