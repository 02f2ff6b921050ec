"""The optimizer step's speed against torch's foreach AdamW and against its floor (issue 17's table).

    python profiles/measured/step_speed.py profiles/bench/llama-350m-width-6layer.json [more configs] \
        --out profiles/measured/step_cpu_$(date +%F).jsonl

One process, one torch thread by default, fp32. Every case's optimizer is built on the same model (random gradients
of 1e-3 scale stay fixed; lr 1e-5), warmed up by two steps (the first refreshes the projection), then timed in
interleaved rounds: each round times one `step()` of every case and one call of every case's floor
(`subprof.measure.floor`) in turn, so a busy machine slows all of them alike. A row per case holds medians over the
rounds and the ratios the issue sets targets on — step/floor, step/(torch AdamW foreach), and 8-bit/16-bit of the
same method — with the device, versions, threads, load average and date. Low-rank methods step between refreshes
(GaLore's gap 200); streaming ones (Ori, OSD) at their default gap of 1, whose floor includes G(GᵀP).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import torch

# (label, method, options); ranks are per case, state_bits 32 unless named
CASES = [
    ("adamw", "adamw", dict(foreach=True)),
    ("galore r64", "galore", dict(rank=64, update_gap=200)),
    ("galore r256", "galore", dict(rank=256, update_gap=200)),
    ("galore r256 16-bit", "galore", dict(rank=256, update_gap=200, state_bits=16)),
    ("galore r256 8-bit", "galore", dict(rank=256, update_gap=200, state_bits=8)),
    ("ori r256", "ori", dict(rank=256)),
    ("osd r256", "osd", dict(rank=256)),
    ("ori r256 16-bit", "ori", dict(rank=256, state_bits=16)),
    ("ori r256 8-bit", "ori", dict(rank=256, state_bits=8)),
]


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(config_path: str, rounds: int, out: pathlib.Path, cases: list[tuple]) -> None:
    import subprof
    from subprof.catalog import load_model
    from subprof.config import TrainConfig
    from subprof.measure.floor import floor_fn
    from subprof.measure.model import build_model
    from subprof.optim import build_optimizer

    cfg = load_model(config_path)
    model = build_model(cfg, dtype="fp32")
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    steps, floors, buffers = {}, {}, {}
    for label, method, options in cases:
        opt = build_optimizer(model, method, lr=1e-5, nonfinite="off" if method != "adamw" else "raise", **options)
        for _ in range(2):
            opt.step()
        steps[label] = opt.step
        config = TrainConfig(model=cfg, method=method, rank=options.get("rank"), dtype="fp32",
                             update_gap=options.get("update_gap"))
        floors[label] = floor_fn(model, config, buffers=buffers)  # one copy of each buffer: 1b fits
        floors[label]()
        print(f"{label}: ready", flush=True)
    load_before = os.getloadavg()[0]
    times = {label: [] for label in steps}
    floor_times = {label: [] for label in steps}
    for i in range(rounds):
        for label in steps:
            t0 = time.perf_counter()
            steps[label]()
            times[label].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            floors[label]()
            floor_times[label].append(time.perf_counter() - t0)
        print(f"round {i + 1}/{rounds}", flush=True)
    median = {label: statistics.median(ts) for label, ts in times.items()}
    floor = {label: statistics.median(ts) for label, ts in floor_times.items()}
    common = {"model": pathlib.Path(config_path).stem, "hidden": cfg.hidden, "layers": cfg.layers,
              "dtype": "fp32", "device": f"cpu ({torch.get_num_threads()} threads)", "cpu": cpu_name(),
              "torch": torch.__version__, "subprof": subprof.__version__, "rounds": rounds,
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "date": datetime.date.today().isoformat()}
    with out.open("a") as fh:
        for label, method, options in cases:
            bits = options.get("state_bits", 32)
            row = {**common, "case": label, "method": method, "rank": options.get("rank"),
                   "update_gap": options.get("update_gap"), "state_bits": bits,
                   "step_ms": round(1e3 * median[label], 2), "floor_ms": round(1e3 * floor[label], 2),
                   "step_over_floor": round(median[label] / floor[label], 3),
                   "step_over_adamw": round(median[label] / median["adamw"], 3)}
            if bits == 8:
                row["step_over_16bit"] = round(median[label] / median[label.replace("8-bit", "16-bit")], 3)
            fh.write(json.dumps(row) + "\n")
            print(f"{label:20s} step {row['step_ms']:9.1f} ms  floor {row['floor_ms']:9.1f} ms  "
                  f"/floor {row['step_over_floor']:5.2f}  /adamw {row['step_over_adamw']:5.2f}"
                  + (f"  /16-bit {row['step_over_16bit']:5.2f}" if bits == 8 else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="LLaMA config.json paths or catalogue names")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--cases", help="comma-separated labels to run (default: all; adamw is always run, the "
                                        "ratios need it, and an 8-bit case needs its 16-bit one)")
    args = parser.parse_args()
    cases = CASES
    if args.cases:
        wanted = {c.strip() for c in args.cases.split(",")} | {"adamw"}
        wanted |= {w.replace("8-bit", "16-bit") for w in wanted}
        unknown = wanted - {label for label, _, _ in CASES}
        if unknown:
            parser.error(f"unknown case(s) {sorted(unknown)}; known: {[label for label, _, _ in CASES]}")
        cases = [c for c in CASES if c[0] in wanted]
    torch.set_num_threads(args.threads)
    for config in args.configs:
        run(config, args.rounds, args.out, cases)


if __name__ == "__main__":
    main()
