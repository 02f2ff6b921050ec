"""The options several commands share, declared once (typer `Annotated` aliases, as huggingface_hub's CLI does)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from subprof.config import DTYPE_HELP, default_threads
from subprof.modes import CHECKPOINTING_HELP, LOSS_HELP

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


class Format(str, Enum):
    """What a tabular command prints: `ui.output_format` resolves it with `--json`, `ui.print_rows` writes csv and
    markdown."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


FormatOpt = Annotated[Optional[Format], typer.Option("--format", case_sensitive=False, help="Output: table (rich, the "
                                                     "default), json (as --json), csv or markdown (a GitHub table) "
                                                     "of the rows.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Catalogue name (see `subprof models`) or a path to a "
                                                              "LLaMA config.json.")]
SeqOpt = Annotated[int, typer.Option("--seq", help="Sequence length in tokens.", min=1)]
BatchOpt = Annotated[int, typer.Option("--batch", "-b", help="Micro-batch size (sequences per step).", min=1)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help=DTYPE_HELP)]
RankOpt = Annotated[Optional[int], typer.Option("--rank", "-r", help="Projection rank (low-rank methods; each weight "
                                                                    "uses min(rank, m, n)).")]
GapOpt = Annotated[Optional[int], typer.Option("--update-gap", "-T", help="Steps between projection updates "
                                                                          "(default: the method's).")]
BitsOpt = Annotated[Optional[int], typer.Option("--state-bits", help="Optimizer state precision: 32, 16 or 8 "
                                                                      "(default: 16 for bf16, 32 otherwise).")]
LayerwiseOpt = Annotated[bool, typer.Option("--layerwise", help="Per-layer updates in backward hooks.")]
CkptOpt = Annotated[str, typer.Option("--checkpointing", help=CHECKPOINTING_HELP + " A bare --checkpointing is "
                                                                                  "full.")]
LossOpt = Annotated[str, typer.Option("--loss", help=LOSS_HELP)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Skip cases already finished in --out.")]
DataOpt = Annotated[Optional[list[Path]], typer.Option("--data", help="Text files/folders, or nanoGPT-style .bin token "
                                                   "files (repeatable). Default: the Python standard library's "
                                                   "sources.")]
DataDtypeOpt = Annotated[str, typer.Option("--data-dtype", help="Token dtype of .bin files: uint16 (nanoGPT) or "
                                                                "uint32.")]
VocabOpt = Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary for text corpora.", min=300)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Initialisation and data-order seed.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (default: half the "
                                                   f"cores, {default_threads()} here; on a busy machine fewer threads "
                                                   "run faster).")]
CalibrationOpt = Annotated[Optional[str], typer.Option("--calibration", help="A calibration record written by `subprof "
                                                       "calibrate` (default: the newest record for the target GPU, "
                                                       "else the H100 reference rows).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the third-party warnings subprof filters as "
                                                                "known noise (subprof/quiet.py).")]
OffloadOpt = Annotated[str, typer.Option("--offload", help="none, or optimizer: parameters, gradients and AdamW "
                                                           "states in host memory, the step on the CPU (FSDP2 "
                                                           "CPUOffloadPolicy, one GPU); prints the GPU / host split.")]
BaseOpt = Annotated[str, typer.Option("--base", help="Base optimizer on the projected gradient and on the unprojected "
                                                     "tensors: adamw, lion or adafactor (subprof.methods.bases).")]
