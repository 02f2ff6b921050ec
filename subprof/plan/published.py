"""Published results as data (`profiles/evidence/*.toml`): each paper's numbers with the citation, the URL, the
date it was read and how the figures were found, and what could not be found. Read by the published-results prior
(`subprof.plan.prior_fit`) and by the trackers' lag calibration (`subprof.plan.evidence`). Pure Python."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from subprof.catalog import profiles_dir
from subprof.errors import SubprofError
from subprof.methods import REGISTRY


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishedResult:
    model: str
    rank: int | None = None
    update_gap: int | None = None
    tokens: float | None = None
    ppl: float | None = None
    full_rank_ppl: float | None = None
    versus_method: str | None = None
    versus_ppl: float | None = None
    versus_update_gap: int | None = None
    gap_closure: float | None = None
    qualifier: str = ""
    note: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceFile:
    """One paper's numbers (`profiles/evidence/<name>.toml`)."""

    path: str
    method: str
    also: tuple[str, ...]
    title: str
    citation: str
    url: str
    read: str
    how_found: str
    results: tuple[PublishedResult, ...]
    not_found: tuple[dict, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, *self.also)


def evidence_dir() -> Path:
    return profiles_dir() / "evidence"


def load_published(folder: Path | None = None) -> list[EvidenceFile]:
    """Every evidence file, validated: a registered method, a citation with a URL, results with known fields."""
    out = []
    for path in sorted((folder or evidence_dir()).glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SubprofError(f"evidence file {path.name}: {exc}") from None
        src = data.get("source", {})
        missing = [k for k in ("method", "title", "citation", "url", "read", "how_found") if not src.get(k)]
        if missing:
            raise SubprofError(f"evidence file {path.name}: [source] lacks {', '.join(missing)}")
        for name in [src["method"], *src.get("also", [])]:
            if name not in REGISTRY:
                raise SubprofError(f"evidence file {path.name}: method {name!r} is not registered")
        try:
            results = tuple(PublishedResult(**r) for r in data.get("result", []))
        except TypeError as exc:
            raise SubprofError(f"evidence file {path.name}: {exc}") from None
        out.append(EvidenceFile(path=path.name, method=src["method"], also=tuple(src.get("also", [])),
                                title=src["title"], citation=src["citation"], url=src["url"], read=src["read"],
                                how_found=" ".join(src["how_found"].split()), results=results,
                                not_found=tuple(data.get("not_found", []))))
    return out
