"""Published and measured result tables as data: what the quality model (`subprof.plan.quality`) is fitted to.

`profiles/evidence/tables/*.toml` hold one paper each (format: `profiles/evidence/tables/SCHEMA.md`): its citation,
where the text was read, which methods it proposes (`own_methods`: tuned by their authors), and its tables, every
number as printed. Our own long CPU runs (`profiles/measured/gap_grid_*.jsonl`, burst rows) are read as tables
too. A table is only ever compared with itself: rows are grouped by (table, model, steps or tokens, sequence) and
the fit uses differences within a group. Pure Python.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from subprof.catalog import profiles_dir
from subprof.errors import SubprofError

ROW_KEYS = {"model", "method", "rank", "update_gap", "steps", "tokens", "value", "label", "note", "copied", "variant",
            "base", "p_optimizer", "state_bits", "lr", "scale", "seed_std", "batch"}
TABLE_KEYS = {"id", "where", "metric", "dataset", "seq", "batch", "setting", "steps", "update_gap", "row", "magnitude",
              "magnitude_note"}
SOURCE_KEYS = ("key", "title", "citation", "url", "read", "how_found")
MEASURED_GLOB = "gap_grid_*.jsonl"
STREAM = re.compile(r"_[a-z](?=_\d{4}-\d\d-\d\d$)")


@dataclass(frozen=True, kw_only=True, slots=True)
class TableRow:
    """One printed result. `loss` is in nats (ln of a perplexity, or a loss as printed); `own`: the paper proposes
    this row's method and ran it itself (not `copied` from another paper)."""

    table: str
    model: str
    method: str
    loss: float
    printed: float
    rank: int | None = None
    update_gap: int | None = None
    steps: int | None = None
    tokens: float | None = None
    seq: int | None = None
    batch: int | None = None
    variant: str = ""
    base: str = ""
    p_optimizer: str = ""
    copied: bool = False
    own: bool = False
    label: str = ""
    note: str = ""
    seed: int | None = None
    magnitude: bool = True  # False: the table orders configurations but its gaps are not on the common scale

    @property
    def group(self) -> tuple:
        """Rows comparable with each other: same table, model, length of training and sequence (and seed)."""
        return (self.table, self.model, self.steps, self.tokens, self.seq, self.seed)

    @property
    def tokens_per_step(self) -> int | None:
        return self.batch * self.seq if self.batch and self.seq else None


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    id: str
    where: str
    paper: str  # the paper's key, or "measured"
    citation: str
    rows: tuple[TableRow, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Paper:
    key: str
    title: str
    citation: str
    url: str
    read: str
    how_found: str
    own_methods: tuple[str, ...]
    tables: tuple[Table, ...]
    not_found: tuple[dict, ...]


def evidence_dir() -> Path:
    return profiles_dir() / "evidence"


def tables_dir() -> Path:
    return evidence_dir() / "tables"


def _row(data: dict, table: dict, paper: dict, path: Path) -> TableRow:
    unknown = sorted(set(data) - ROW_KEYS)
    if unknown:
        raise SubprofError(f"evidence file {path.name}, table {table['id']}: unknown row key(s) {', '.join(unknown)}")
    if "value" not in data or "method" not in data or "model" not in data:
        raise SubprofError(f"evidence file {path.name}, table {table['id']}: a row lacks model, method or value")
    value = float(data["value"])
    metric = table["metric"]
    if metric not in ("ppl", "loss") or value <= 0:
        raise SubprofError(f"evidence file {path.name}, table {table['id']}: metric {metric!r} value {value}")
    method = str(data["method"]).lower()
    copied = bool(data.get("copied", False))
    return TableRow(table=table["id"], model=str(data["model"]).lower(), method=method,
                    loss=math.log(value) if metric == "ppl" else value, printed=value,
                    rank=data.get("rank"), update_gap=data.get("update_gap", table.get("update_gap")),
                    steps=data.get("steps", table.get("steps")), tokens=data.get("tokens"), seq=table.get("seq"),
                    batch=data.get("batch", table.get("batch")), variant=str(data.get("variant", "")), base=str(data.get("base", "")),
                    p_optimizer=str(data.get("p_optimizer", "")), copied=copied,
                    own=method in paper.get("own_methods", []) and not copied, label=str(data.get("label", "")),
                    note=str(data.get("note", "")), magnitude=bool(table.get("magnitude", True)))


def load_paper(path: Path) -> Paper:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SubprofError(f"evidence file {path.name}: {exc}") from None
    src = data.get("source", {})
    missing = [k for k in SOURCE_KEYS if not src.get(k)]
    if missing:
        raise SubprofError(f"evidence file {path.name}: [source] lacks {', '.join(missing)}")
    tables, ids = [], set()
    for t in data.get("table", []):
        unknown = sorted(set(t) - TABLE_KEYS)
        if unknown or not t.get("id") or not t.get("where"):
            raise SubprofError(f"evidence file {path.name}: a table lacks id/where or has unknown key(s) "
                               f"{', '.join(unknown)}")
        if t["id"] in ids:
            raise SubprofError(f"evidence file {path.name}: table id {t['id']!r} twice")
        ids.add(t["id"])
        tables.append(Table(id=t["id"], where=t["where"], paper=src["key"], citation=src["citation"],
                            rows=tuple(_row(r, t, src, path) for r in t.get("row", []))))
    return Paper(key=src["key"], title=src["title"], citation=src["citation"], url=src["url"], read=src["read"],
                 how_found=" ".join(str(src["how_found"]).split()), own_methods=tuple(src.get("own_methods", [])),
                 tables=tuple(tables), not_found=tuple(data.get("not_found", [])))


def load_papers(folder: Path | None = None) -> list[Paper]:
    """Every paper file, validated (keys, metric, ids)."""
    return [load_paper(p) for p in sorted((folder or tables_dir()).glob("*.toml"))]


def measured_table(path: Path) -> Table:
    """A committed burst file (`subprof burst` rows) as one table: the finished low-rank runs' final validation
    losses, grouped like published rows (model, steps, sequence, seed). Full-rank rows stay out: at its published
    lr (1e-3) AdamW trails GaLore at its own (1e-2 × scale 0.25) by 0.2 nats on the tiny proxy over 1,000 steps —
    a learning-rate comparison, which the low-rank rows (every method at 1e-2) do not make among themselves."""
    rows = []
    table = STREAM.sub("", path.stem)  # the streams of one grid (…_a_DATE, …_b_DATE) are one table
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") != "burst" or r.get("status") != "ok" or r.get("val_loss") is None:
                continue
            if r.get("rank") is None:  # a full-rank row at its own published lr: an lr comparison (see above)
                continue
            rows.append(TableRow(table=table, model=r["model"], method=r["method"], loss=float(r["val_loss"]),
                                 printed=float(r["val_loss"]), rank=r.get("rank"), update_gap=r.get("update_gap"),
                                 steps=r["steps"], seq=r["seq"], batch=r["batch"], seed=r.get("seed"),
                                 label=f"lr {r.get('lr')}", note=f"{r.get('device')} {r.get('date', '')[:10]}"))
    return Table(id=table, where=f"profiles/measured/{path.name}", paper="measured",
                 citation=f"subprof burst, profiles/measured/{path.name}", rows=tuple(rows))


def load_tables(folder: Path | None = None, measured: Path | None = None) -> list[Table]:
    """Every published table and every committed long CPU grid. A copied row of a method some paper proposes counts
    as that paper's own (baselines are copied from the method's own paper, tuned by its authors)."""
    papers = load_papers(folder)
    proposed = {m for p in papers for m in p.own_methods}
    out = [replace(t, rows=tuple(replace(r, own=True) if r.copied and r.method in proposed else r for r in t.rows))
           for p in papers for t in p.tables]
    runs: dict[str, Table] = {}
    for path in sorted((measured or profiles_dir() / "measured").glob(MEASURED_GLOB)):
        t = measured_table(path)
        prev = runs.get(t.id)
        runs[t.id] = t if prev is None else replace(prev, where=f"{prev.where}, {t.where}", rows=prev.rows + t.rows)
    return out + list(runs.values())


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    """An authors' published configuration for one model size (`profiles/evidence/recipes.toml`)."""

    method: str
    model: str
    rank: int
    update_gap: int
    source: str
    state_bits: int | None = None
    layerwise: bool | None = None

    def label(self) -> str:
        extra = (" 8bit" if self.state_bits == 8 else "") + (" layerwise" if self.layerwise else "")
        return f"{self.method} r{self.rank} T{self.update_gap}{extra}"


def load_recipes(path: Path | None = None) -> list[Recipe]:
    path = path or evidence_dir() / "recipes.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return [Recipe(**r) for r in data.get("recipe", [])]
    except (OSError, tomllib.TOMLDecodeError, TypeError) as exc:
        raise SubprofError(f"recipes file {path.name}: {exc}") from None
