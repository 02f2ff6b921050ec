"""`subprof probe`: measure the gradient subspace of the target model (or a stated proxy) during a short real
training run — energy against rank, staleness and drift against gap — and summarise it per layer type. The work is
`subprof.train.probe.run_probe`; the numbers read off the curves come from `subprof.plan.probe_curves`."""

# no `from __future__ import annotations`: typer reads the commands' signatures at every start (cli/__init__.py)

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from subprof.cli.options import (BatchOpt, DataDtypeOpt, DataOpt, DeviceOpt, FormatOpt, JsonOpt, ModelOpt, ResumeOpt,
                                 SeedOpt, ThreadsOpt, VocabOpt)
from subprof.cli.ui import (console, err_console, guarded, output_format, parse_int_list, print_json, print_rows,
                            progress_bar)


def probe(
    model: ModelOpt,
    data: DataOpt = None,
    steps: Annotated[int, typer.Option("--steps", help="Training steps.")] = 200,
    ranks: Annotated[Optional[str], typer.Option("--ranks", help="Candidate ranks, comma-separated (default: powers "
                                                 "of two from 8 to half the widest weight's smaller side).")] = None,
    gaps: Annotated[Optional[str], typer.Option("--gaps", help="Gaps k at which a basis from step t is compared "
                                                "with step t + k (default: 1,10,50,200,500 below --steps).")] = None,
    every: Annotated[int, typer.Option("--every", help="Sample the energy every K steps (pairs for the gaps start "
                                                       "at multiples of K).")] = 10,
    method: Annotated[str, typer.Option("--method", help="Optimizer to train with: adamw, or a low-rank method "
                                                         "(then its own basis is compared with the fresh one).")]
    = "adamw",
    rank: Annotated[Optional[int], typer.Option("--rank", help="Rank of --method (low-rank methods).")] = None,
    update_gap: Annotated[Optional[int], typer.Option("--update-gap", help="Update gap of --method.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default: the method's published "
                                                "one, MethodSpec.default_lr, as burst; AdamW 1e-3).")] = None,
    batch: BatchOpt = 8,
    seq: Annotated[int, typer.Option("--seq", help="Sequence length in tokens.")] = 128,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    data_dtype: DataDtypeOpt = "uint16",
    vocab_size: VocabOpt = 8192,
    out: Annotated[Path, typer.Option("--out", help="JSONL file the rows are appended to.")] = Path(
        "reports/probe.jsonl"),
    resume: ResumeOpt = False,
    json_out: JsonOpt = False,
    fmt: FormatOpt = None,
) -> None:
    """Gradient-subspace probe: energy vs rank, staleness and drift vs gap, per layer type, from real training."""
    from subprof.catalog import load_model
    from subprof.plan.probe_curves import ProbeRun, probe_summary
    from subprof.results import check_writable
    from subprof.train.corpus import load_corpus
    from subprof.train.probe import ProbeSettings, check_ranks, run_probe

    fmt = output_format(fmt, json_out)
    target = load_model(model)
    settings = ProbeSettings(steps=steps, every=every, method=method, rank=rank, update_gap=update_gap, lr=lr,
                             batch=batch, seq=seq, seed=seed, device=device, threads=threads,
                             ranks=tuple(parse_int_list(ranks, "--ranks")) if ranks else None,
                             gaps=tuple(parse_int_list(gaps, "--gaps")) if gaps else None)
    if settings.ranks:
        check_ranks(target, settings.ranks)  # before the corpus is tokenized
    check_writable(out, example="probe.jsonl")
    corpus = load_corpus(list(data) if data else None, vocab_size=vocab_size, token_dtype=data_dtype)

    def announce(header: dict) -> None:
        if fmt != "table":
            return
        err_console.print(f"corpus: {corpus.description} — {corpus.tokens:,} tokens")
        err_console.print(f"probing {header['model']}" + (f" ({header['proxy_note']})" if header["proxy_note"] else "")
                          + f" with {header['method']} at lr {header['lr']:g}, {steps} steps × {batch}×{seq} tokens "
                          f"on {header['device']}; ranks {', '.join(map(str, header['ranks']))}; gaps "
                          f"{', '.join(map(str, header['gaps']))}; energy every {every} steps")
        for note in settings.notes:
            err_console.print(f"note: {note}")

    with progress_bar(steps, "probe", quiet=fmt != "table") as bar:
        rows = run_probe(target, settings, corpus, out=str(out), resume=resume, progress=bar, announce=announce)
    run = ProbeRun.from_rows(rows, str(out))
    summary = probe_summary(run)
    if fmt not in ("json", "table"):
        print_rows(*summary_rows(summary), fmt)
        return
    if fmt == "json":
        print_json({"out": str(out), "run": run.header, "end": run.end, "notes": settings.notes,
                    "summary": _jsonable(summary)})
        return
    render_summary(run, summary)
    console.print(f"rows already in {out} (finished earlier)" if run.end and run.end.get("resumed") else
                  f"rows appended to {out}")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _num(v: float | None, fmt: str = "{:.0f}", missing: str = "–") -> str:
    return missing if v is None else fmt.format(v)


def _gap(value: float | None, first: int, last: int) -> str:
    """A crossing gap: '<first' when the first measured gap is already below, '>last' when none is."""
    if value is None:
        return f">{last}"
    return f"<{first}" if value < first else f"{value:.0f}"


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def summary_rows(summary: dict) -> tuple[list[dict], list[str]]:
    """`render_summary`'s two tables as one row per layer type for `--format csv|markdown`: side d, knee, the ranks
    reaching 50/80/90% energy (1 decimal; empty: beyond the largest rank probed), E at each rank (4 decimals), and per
    rank the gap where a stale basis falls below 90% / 80% of a fresh one (2 decimals; empty: none measured did); and
    the columns."""
    ranks = sorted({r for e in summary.values() for r in e["energy"]})
    stale_ranks = sorted({r for e in summary.values() for r in e["staleness"]})
    columns = ["type", "d", "knee", "rank_at_50", "rank_at_80", "rank_at_90", *[f"energy_r{r}" for r in ranks],
               *[f"gap_below_{p}_r{r}" for r in stale_ranks for p in (90, 80)]]
    rows = []
    for kind, e in summary.items():
        row = {"type": kind, "d": e["side"], "knee": e["knee"],
               **{f"rank_at_{p}": _round(e[f"rank_at_{p}"], 1) for p in (50, 80, 90)},
               **{f"energy_r{r}": _round(e["energy"].get(r), 4) for r in ranks}}
        for r in stale_ranks:
            s = e["staleness"].get(r) or {}
            row |= {f"gap_below_{p}_r{r}": _round(s.get(f"gap_below_{p}"), 2) for p in (90, 80)}
        rows.append(row)
    return rows, columns


def render_summary(run, summary: dict) -> None:
    """Two tables per layer type: energy (rank reaching 50/80/90%, knee, E at each rank) and staleness (gap where
    a stale basis falls below 90%/80% of a fresh one, per rank)."""
    h = run.header
    ranks = run.ranks
    energy = Table(title=f"captured energy E(r) = Σ_{{i<r}} σᵢ² / ‖G‖² — {h['model']}, {h['method']}, "
                         f"{run.end['steps_done'] if run.end else '?'} steps ({', '.join(run.decompositions())} SVD)")
    for col in ("type", "d", "knee", "r@50%", "r@80%", "r@90%", *[f"E(r{r})" for r in ranks]):
        energy.add_column(col, justify="left" if col == "type" else "right")
    for kind, e in summary.items():
        energy.add_row(kind, str(e["side"]), _num(e["knee"]),
                       *[_num(e[f"rank_at_{p}"], missing=f">{max(ranks)}") for p in (50, 80, 90)],
                       *[_num(e["energy"].get(r), "{:.3f}") for r in ranks])
    console.print(energy)
    stale_ranks = sorted({r for e in summary.values() for r in e["staleness"]})
    if stale_ranks:
        gaps = max(run.gaps) if run.gaps else 0
        first = min(run.gaps) if run.gaps else 1
        stale = Table(title="staleness s(k) = ‖P_tᵀG_{t+k}‖² / fresh top-r share: the gap where a stale basis falls "
                            "below 90% / 80% of a fresh one")
        stale.add_column("type")
        for r in stale_ranks:
            stale.add_column(f"r{r}", justify="right")
        for kind, e in summary.items():
            cells = []
            for r in stale_ranks:
                s = e["staleness"].get(r)
                cells.append("–" if s is None else f"{_gap(s['gap_below_90'], first, gaps)} / "
                             f"{_gap(s['gap_below_80'], first, gaps)}")
            stale.add_row(kind, *cells)
        console.print(stale)
    if run.end:
        e = run.end
        ratio = e.get("probe_over_train_step")
        console.print(f"training step (median) {e['train_step_median_s']:.3f} s; decompositions per sampled step "
                      f"(median) {e['probe_s_per_sampled_step_median']:.3f} s"
                      + (f" = {ratio:.2f}× a training step" if ratio else "")
                      + f"; {e['sampled_steps']} sampled steps; stored bases at most "
                      f"{e['stored_bases_bytes_max'] / 2**20:,.1f} MiB; wall {e['wall_s']:,.0f} s; status {e['status']}"
                      + (" (resumed: nothing rerun)" if e.get("resumed") else ""))
    console.print("knee: directions carrying more than the mean share ‖G‖²/d; s(0) = 1 by definition, and s(1) < 1 "
                  "measures the mini-batch noise a fresh basis fits")


def register(app: typer.Typer) -> None:
    app.command()(guarded(probe))
