"""`subprof burst`: short real training runs per method × rank × update gap on the default corpus or `--data`,
ranked by validation loss with throughput and memory beside it, each method at its own learning rate (its published
default, or the best of `--lr-grid K` around it). The work is `subprof.train.burst.run_bursts`."""

# no `from __future__ import annotations`: typer reads the commands' signatures at every start (cli/__init__.py)

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from subprof.cli.options import (BatchOpt, DataDtypeOpt, DataOpt, DeviceOpt, DtypeOpt, FormatOpt, JsonOpt, ResumeOpt,
                                 SeedOpt, ThreadsOpt, VerboseOpt, VocabOpt)
from subprof.cli.ui import (console, count_rows, err_console, guarded, interrupted, output_format, parse_int_list,
                            parse_str_list, print_json, print_rows, progress_bar, refuse_unless)
from subprof.errors import SubprofError
from subprof.train.lrgrid import best_rows


def burst(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Catalogue model(s), comma-separated (CPU: tiny, "
                                                             "20m).")] = "tiny",
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods.")] = "adamw,galore,osd,ori",
    ranks: Annotated[str, typer.Option("--ranks", help="Comma-separated ranks (low-rank methods).")] = "16,64",
    update_gaps: Annotated[str, typer.Option("--update-gaps", help="Comma-separated projection update gaps "
                                             "(periodic methods; every-step methods run at 1).")] = "1,50,200",
    steps: Annotated[int, typer.Option("--steps", help="Training steps per case.", min=1)] = 200,
    batch: BatchOpt = 8,
    seq: Annotated[int, typer.Option("--seq", help="Sequence length in tokens.", min=2)] = 256,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate for every case (default: each "
                                                "method's published lr; scale 0.25).")] = None,
    lr_grid: Annotated[Optional[int], typer.Option("--lr-grid", help="Train each configuration at K learning rates "
                                                   "in half-decade steps around its default (or --lr) and keep the "
                                                   "best validation loss.", min=1)] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validation loss every K steps (and at the "
                                                                 "end).", min=1)] = 50,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    base: Annotated[Optional[str], typer.Option("--base", help="Base optimizer of every method that runs one: "
                                                "adamw, lion or adafactor (default: each method's own).")] = None,
    data: DataOpt = None,
    data_dtype: DataDtypeOpt = "uint16",
    vocab_size: VocabOpt = 8192,
    threads: ThreadsOpt = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Train each case data-parallel over N local processes "
                                       "(gloo on the CPU, NCCL with a GPU each), the --batch sequences of each step "
                                       "split over them: the same data order as one process.")] = 1,
    strategy: Annotated[str, typer.Option("--strategy", help="With --nproc: fsdp (FSDP2, each weight sharded as "
                                          "its method declares) or ddp.")] = "fsdp",
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option("--out", help="JSONL file the rows are appended to.")] = Path(
        "reports/burst.jsonl"),
    resume: ResumeOpt = False,
    json_out: JsonOpt = False,
    fmt: FormatOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Short real training runs: identical init and data order per case; validation loss, tokens/s, memory."""
    from subprof.quiet import show_known_noise
    from subprof.results import check_writable
    from subprof.train.burst import (BurstSettings, check_before_corpus, check_cases, check_split, expand_cases,
                                     refresh_notes, run_bursts)
    from subprof.train.corpus import load_corpus

    fmt = output_format(fmt, json_out)
    show_known_noise(verbose)
    if base is not None:
        from subprof.methods.bases import get_base

        base = get_base(base).name  # one line naming the known ones when unknown
    cases, notes = expand_cases(parse_str_list(model), parse_str_list(methods), parse_int_list(ranks, "--ranks"),
                                parse_int_list(update_gaps, "--update-gaps"), batch=batch, seq=seq, dtype=dtype,
                                lr=lr, lr_grid=lr_grid, base=base)
    if not cases:
        raise SubprofError("no cases to run: " + "; ".join(notes))
    refuse_unless(ctx, any(c.config.spec.project for c in cases), ("ranks", "update_gaps"),
                  f"applies to low-rank methods, and --methods {methods} are all full-rank: leave it out")
    refuse_unless(ctx, nproc > 1, ("strategy",), f"{strategy} applies with --nproc N (N ≥ 2): add it, or leave "
                                                 f"--strategy out")
    settings = BurstSettings(steps=steps, eval_every=eval_every, device=device, seed=seed, data_seed=seed,
                             threads=threads, nproc=nproc, strategy=strategy.strip().lower())
    check_split(cases, settings)
    check_writable(out)
    check_before_corpus(cases, settings)  # what can be refused before the corpus is read and tokenised
    rows_before = count_rows(out)
    try:
        corpus = load_corpus(list(data) if data else None, vocab_size=vocab_size, token_dtype=data_dtype)
        corpus.require(seq)
        if fmt == "table":
            err_console.print(f"corpus: {corpus.description} — {corpus.tokens:,} tokens "
                              f"({corpus.train.size:,} train / {corpus.val.size:,} validation)"
                              + (" [cached]" if corpus.cache_hit else ""))
            for note in notes + refresh_notes(cases, steps):
                err_console.print(f"note: {note}")
        check_cases(cases, settings, corpus)
        with progress_bar(len(cases) * steps, "burst", quiet=fmt != "table") as bar:
            if nproc > 1:
                from subprof.train.parallel import run_bursts_parallel

                rows = run_bursts_parallel(cases, settings, corpus, out=str(out), resume=resume, progress=bar)
            else:
                rows = run_bursts(cases, settings, corpus, out=str(out), resume=resume, progress=bar)
    except KeyboardInterrupt:
        interrupted(out, count_rows(out) - rows_before)
    best = best_rows(rows) if lr_grid else rows
    if fmt not in ("json", "table"):
        print_rows(burst_rows(best), BURST_COLUMNS, fmt)
        return
    if fmt == "json":
        print_json({"corpus": corpus.summary() | {"description": corpus.description}, "notes": notes,
                    "out": str(out), "rows": rows, "best": best if lr_grid else None})
        return
    console.print(burst_table(best, title=f"burst on {corpus.name} ({corpus.tokens:,} tokens), {steps} steps × "
                                          f"{batch}×{seq} tokens, device {settings.device}"
                                          + (f", {nproc} processes ({settings.strategy})" if nproc > 1 else "")
                                          + (f", best of {lr_grid} learning rates per configuration" if lr_grid
                                             else "")))
    if lr_grid:
        console.print("learning rates tried (final validation loss; * best at the edge of its grid — the optimum may "
                      "lie beyond it):")
        for r in best:
            tried = " · ".join(f"{lr:.3g}: {v:.4f}" if v is not None else f"{lr:.3g}: diverged"
                               for lr, v in r["lr_tried"])
            console.print(f"  {r['method']} {'r' + str(r['rank']) if r['rank'] else 'full'}"
                          f"{' T' + str(r['update_gap']) if r['update_gap'] else ''}: {tried}"
                          + (" *" if r["lr_at_edge"] else ""))
    console.print("lr: peak learning rate (default: the method's published one, `subprof.methods` lr_source); "
                  "val loss: mean next-token cross-entropy (nats) on fixed held-out windows after the last step; "
                  "peak: CUDA max_memory_allocated, or on a CPU the MemTracker-traced peak of the first two steps "
                  "(state creation and first projection, then a step with the state resident); proj. share: time "
                  "in projection updates / step time.")
    if nproc > 1:
        console.print(f"With --nproc {nproc}: state MiB is what process 0 holds — under fsdp its shards (about "
                      f"1/{nproc} of one process's state), under ddp the whole; peak is not measured; tokens/s counts "
                      f"all processes.")
    console.print(f"rows appended to {out}")


BURST_COLUMNS = ("place", "model", "method", "state_bits", "rank", "update_gap", "lr", "lr_at_edge", "val_loss",
                 "delta_adamw", "final_train_loss", "tokens_per_s", "projection_share", "peak_mib", "state_mib",
                 "wall_s", "status")


def burst_rows(rows: list[dict]) -> list[dict]:
    """The rows of `burst_table` for `--format csv|markdown`, in its order (by final validation loss, diverged
    last); delta_adamw against the best full-rank AdamW row; losses to 6 decimals, MiB to 2."""
    ref = min((r["val_loss"] for r in rows if r["method"] == "adamw" and r.get("val_loss") is not None),
              default=None)
    ranked = sorted(rows, key=lambda r: (r.get("val_loss") is None, r.get("val_loss") or 0.0))
    out = []
    for i, r in enumerate(ranked, 1):
        val = r.get("val_loss")
        peak = r.get("peak_allocated_bytes") or r.get("peak_tracked_bytes")
        state = r.get("optimizer_state_bytes")
        out.append({k: r.get(k) for k in ("model", "method", "state_bits", "rank", "update_gap", "lr", "status")}
                   | {k: None if r.get(k) is None else round(r[k], digits)
                      for k, digits in (("val_loss", 6), ("final_train_loss", 6), ("tokens_per_s", 1),
                                        ("projection_share", 4), ("wall_s", 2))}
                   | {"place": i, "lr_at_edge": bool(r.get("lr_at_edge")),
                      "delta_adamw": round(val - ref, 6) if val is not None and ref is not None else None,
                      "peak_mib": round(peak / 2**20, 2) if peak else None,
                      "state_mib": round(state / 2**20, 2) if state is not None else None})
    return out


def burst_table(rows: list[dict], *, title: str) -> Table:
    """Cases ranked by final validation loss (diverged last), with the lr each used (* at the edge of its grid),
    the gap to full-rank AdamW, time and memory."""
    ref = min((r["val_loss"] for r in rows if r["method"] == "adamw" and r.get("val_loss") is not None),
              default=None)
    ranked = sorted(rows, key=lambda r: (r.get("val_loss") is None, r.get("val_loss") or 0.0))
    table = Table(title=title)
    for col in ("#", "method", "rank", "gap", "lr", "val loss", "Δ adamw", "train loss", "tokens/s", "proj. share",
                "peak MiB", "state MiB", "time s", "status"):
        table.add_column(col, justify="left" if col in ("method", "status") else "right")
    for i, r in enumerate(ranked, 1):
        val = r.get("val_loss")
        peak = r.get("peak_allocated_bytes") or r.get("peak_tracked_bytes")
        table.add_row(
            str(i), r["method"] + (" 8bit" if r.get("state_bits") == 8 else ""), str(r["rank"] or "full"), str(r["update_gap"] or "–"),
            f"{r['lr']:.3g}" + ("*" if r.get("lr_at_edge") else ""),
            f"{val:.4f}" if val is not None else "–",
            f"{val - ref:+.4f}" if val is not None and ref is not None else "–",
            f"{r['final_train_loss']:.4f}" if r.get("final_train_loss") is not None else "–",
            f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "–",
            f"{r['projection_share']:.1%}" if r.get("projection_share") is not None else "–",
            f"{peak / 2**20:,.1f}" if peak else "not measured",
            f"{r['optimizer_state_bytes'] / 2**20:,.2f}" if r.get("optimizer_state_bytes") is not None else "–",
            f"{r['wall_s']:,.0f}" if r.get("wall_s") is not None else "–",
            r["status"] + (" (resumed)" if r.get("resumed") else ""))
    return table


def register(app: typer.Typer) -> None:
    app.command()(guarded(burst))
