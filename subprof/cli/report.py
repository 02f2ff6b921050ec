"""`subprof report`: one self-contained offline HTML page for deciding which GPU to buy or rent. Torch-free.

Parses the flags, reads the result files, calls `report.build_report` (one `plan` per model × GPU, with a progress
bar) and writes the page with `report.html.write_html`; `--json` prints the same tables, `--csv DIR` writes one CSV
per table.
"""

# no `from __future__ import annotations`: typer reads the commands' signatures at every start (cli/__init__.py)

from pathlib import Path
from typing import Annotated, Optional

import typer

from subprof.cli.options import DtypeOpt, JsonOpt, SeqOpt
from subprof.cli.ui import err_console, guarded, parse_int_list, parse_str_list, print_json, progress_bar
from subprof.errors import SubprofError


def parse_prices(items: list[str]) -> dict[str, float]:
    """`--price 4090=0.45 --price h100-sxm=2.5` → {catalogue key: USD per hour}."""
    from subprof.catalog import gpu_by_name

    prices = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SubprofError(f"--price {item!r}: write NAME=USD per GPU-hour, e.g. --price 4090=0.45")
        try:
            usd = float(value.strip().lstrip("$"))
        except ValueError:
            raise SubprofError(f"--price {item!r}: {value!r} is not a number of USD per hour") from None
        if not usd > 0 or usd == float("inf"):
            raise SubprofError(f"--price {item!r}: the price must be a positive number of USD per hour")
        prices[gpu_by_name(name.strip(), "--price").key] = usd
    return prices


def select_gpus(text: str) -> list:
    """`all` or a comma list of catalogue names, ordered by memory (then TFLOP/s)."""
    from subprof.catalog import gpu_by_name, gpu_catalog

    if text.strip().lower() == "all":
        chosen = list(gpu_catalog().values())
    else:
        chosen = list({g.key: g for g in (gpu_by_name(n, "--gpus") for n in parse_str_list(text))}.values())
    if not chosen:
        raise SubprofError("--gpus is empty; give e.g. 4090,a100-80gb or all")
    return sorted(chosen, key=lambda g: (g.memory_bytes, g.bf16_tflops))


def report(
    models: Annotated[str, typer.Option("--models", help="Comma-separated catalogue models or config.json paths, "
                                                         "e.g. 1b,7b.")],
    gpus: Annotated[str, typer.Option("--gpus", help="Catalogue GPUs (see `subprof gpus`), comma-separated, or "
                                                     "all.")] = "all",
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods, or all.")] = "all",
    seq: SeqOpt = 256,
    dtype: DtypeOpt = "bf16",
    tokens: Annotated[str, typer.Option("--tokens", help="Token budget for time and cost, e.g. 10B, 500M.")] = "10B",
    price: Annotated[Optional[list[str]], typer.Option("--price", help="Override a catalogue price: NAME=USD per "
                                                                       "GPU-hour (repeatable).")] = None,
    margin: Annotated[float, typer.Option("--margin", help="Safety margin kept free, as a fraction of GPU "
                                                           "memory.")] = 0.05,
    utilization: Annotated[float, typer.Option("--utilization", help="Assumed fraction of dense BF16 TFLOP/s "
                                                                     "reached by the model's matmuls.")] = 0.4,
    bench: Annotated[Optional[list[Path]], typer.Option("--bench", help="`subprof bench` JSONL (repeatable): "
                                                                        "estimated vs measured.")] = None,
    proj: Annotated[Optional[Path], typer.Option("--proj", help="`subprof proj` JSONL: projection-update "
                                                                "timings.")] = None,
    burst: Annotated[Optional[Path], typer.Option("--burst", help="`subprof burst` JSONL: loss curves.")] = None,
    probe: Annotated[Optional[Path], typer.Option("--probe", help="`subprof probe` JSONL: energy and staleness "
                                                  "curves; also ranks each cell's configurations by it.")] = None,
    gpus_per_node: Annotated[str, typer.Option("--gpus-per-node", help="GPU counts per node for the GPU type × "
                                                                        "count matrix, e.g. 1,2,4,8.")] = "1",
    nodes: Annotated[str, typer.Option("--nodes", help="Node counts for the matrix, e.g. 1,2.")] = "1",
    strategy: Annotated[str, typer.Option("--strategy", help="auto, ddp, fsdp, fsdp-no-reshard or hsdp.")] = "auto",
    days: Annotated[Optional[float], typer.Option("--days", help="Deadline: the cheapest configuration that trains "
                                                                 "--tokens within this many days.")] = None,
    calibration: Annotated[Optional[list[str]], typer.Option("--calibration", help="A calibration record written by "
                                                             "`subprof calibrate` (repeatable): it applies to the GPU "
                                                             "it was measured on. Default: each GPU's newest record "
                                                             "found, else the H100 calibration.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("reports/procurement.html"),
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write one CSV per table into this "
                                                              "folder.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """A self-contained offline HTML report for hardware procurement: per model the cheapest and the fastest GPU
    option first, then the GPU × model fit matrix, time and cost of a token budget, memory breakdowns, and measured
    results when given."""
    from subprof.catalog import load_model
    from subprof.methods import parse_methods
    from subprof.plan.calibration import load as load_calibration
    from subprof.plan.evidence import probe_quality
    from subprof.report.build import build_report, write_csv
    from subprof.report.decision import decision_lines
    from subprof.report.html import write_html
    from subprof.report.scaling import gpu_counts
    from subprof.report.tables import ReportRequest
    from subprof.results import check_writable, read_result_files
    from subprof.units import parse_count

    model_list = [load_model(name) for name in parse_str_list(models)]
    if not model_list:
        raise SubprofError("--models is empty; give e.g. 1b,7b")
    gpu_list = select_gpus(gpus)
    req = ReportRequest(models=model_list, gpus=gpu_list, methods=parse_methods(methods), seq=seq, dtype=dtype,
                        tokens=parse_count(tokens), margin=margin, utilization=utilization,
                        prices=parse_prices(price or []), bench_rows=read_result_files(bench or [], "--bench"),
                        proj_rows=read_result_files([proj] if proj else [], "--proj"),
                        burst_rows=read_result_files([burst] if burst else [], "--burst"),
                        probe_rows=read_result_files([probe] if probe else [], "--probe"),
                        evidence=probe_quality(probe) if probe else None,
                        gpus_per_node=parse_int_list(gpus_per_node, "--gpus-per-node"),
                        nodes=parse_int_list(nodes, "--nodes"), strategy=strategy.strip().lower(), days=days,
                        calibrations=[load_calibration(path) for path in calibration or []])
    if out.suffix.lower() not in (".html", ".htm"):
        raise SubprofError(f"--out {str(out)!r}: the report is an HTML page; give a file name ending in .html")
    check_writable(out, example="procurement.html")
    cells = len(model_list) * len(gpu_list) * (1 + (len(gpu_counts(req)) if req.multi_gpu else 0))
    with progress_bar(cells, "planning GPU × model" + (" × GPU count" if req.multi_gpu else "")) as bar:
        result = build_report(req, on_cell=bar.advance)
    path = write_html(result, out)
    written = write_csv(result, csv) if csv else []
    if json_out:
        print_json(result.to_json())
    else:
        for line in decision_lines(result.tables["decision"]) + result.summary:
            typer.echo(f"• {line}")
    err_console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, opens offline)"
                      + (f" and {len(written)} CSV files in {csv}" if written else ""))


def register(app: typer.Typer) -> None:
    app.command()(guarded(report))
