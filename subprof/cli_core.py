"""Commands of the foundation: `models`, `gpus`, `estimate`, `plan`. Torch-free."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from subprof.ui import JsonOpt, console, guarded, print_json


def models(json_out: JsonOpt = False) -> None:
    """List the model catalogue: parameters, layers, hidden size and the distinct projected weight shapes."""
    from subprof.catalog import load_model, model_names

    rows = []
    for name in model_names():
        cfg = load_model(name)
        rows.append({
            "name": name, "params": cfg.params, "layers": cfg.layers, "hidden": cfg.hidden,
            "intermediate": cfg.intermediate, "heads": cfg.heads, "kv_heads": cfg.kv_heads, "vocab": cfg.vocab,
            "shapes": [list(s) for s in cfg.distinct_shapes()],
        })
    if json_out:
        print_json(rows)
        return
    from subprof.units import fmt_count

    table = Table(title="LLaMA model catalogue (profiles/models/*.json; --model also takes a config.json path)")
    for col in ("name", "params", "layers", "hidden", "intermediate", "heads (kv)", "vocab", "weight shapes m×n"):
        table.add_column(col, justify="left" if col in ("name", "weight shapes m×n") else "right")
    for r in rows:
        table.add_row(r["name"], fmt_count(r["params"]), str(r["layers"]), str(r["hidden"]), str(r["intermediate"]),
                      f"{r['heads']} ({r['kv_heads']})", str(r["vocab"]),
                      ", ".join(f"{m}×{n}" for m, n in r["shapes"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(guarded(models))
