"""`SubprofCallback`: measure a Hugging Face `Trainer` run and hold it against subprof's estimate.

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[SubprofCallback("reports/hf.jsonl")])
    trainer.train()  # at the end, one bench-style row appended to reports/hf.jsonl (also `callback.row`)

What the row holds, as `subprof bench` writes it (`subprof.measure.worker`, `subprof.results`):
- memory: on CUDA `torch.cuda.max_memory_allocated/reserved`, the counter reset at each phase's start
  (forward_backward: the step's micro-batches and gradient clipping; optimizer_step; the first step of a projected
  method is its projection_refresh), the peak the largest phase; on the CPU every tensor under MemTracker
  (`subprof.measure.trace.PhaseTracker`, the `cpu` backend's instrument: its per-op hooks slow the run, so it is
  for small CPU runs), from `on_train_begin` to `on_train_end`;
- time: each optimizer step from `on_step_begin` to `on_step_end` (synchronised on CUDA); tokens/s from the
  `input_ids` the model's forward received;
- `optimizer_state_bytes`: every tensor of dimension ≥ 1 in the optimizer's state, helper objects such as
  galore-torch's projector included.
The estimate beside it (`estimated_peak_allocated_bytes`, `error_pct` as bench computes it: CPU rows against the
model-side estimate) is for the configuration the run had: the model from `model.config` (named after the catalogue
preset with the same weights, if any), the method from the optimizer (`recognise_optimizer`: subprof's, galore-torch's,
torch's or bitsandbytes' AdamW, inside transformers' layer-wise wrapper or not), micro-batch and sequence as the
forward saw them, accumulation and checkpointing from `TrainingArguments`, the dtype from the weights and bf16/fp16.
A run the estimate cannot describe (another optimizer, an unsupported model) still gets its measured row, with
`estimate_error` saying why. Only the main process writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from subprof.errors import SubprofError, require_extra

require_extra("transformers", "subprof.integrations.hf")

import torch  # noqa: E402 - after the one-line message for a missing extra
from transformers import TrainerCallback  # noqa: E402

from subprof.catalog import ModelConfig, load_model, model_from_config, model_names  # noqa: E402
from subprof.config import TrainConfig  # noqa: E402
from subprof.measure.case import Case  # noqa: E402
from subprof.measure.trace import PhaseTracker, _flat  # noqa: E402
from subprof.methods import get_method  # noqa: E402
from subprof.plan.calibration import Calibration  # noqa: E402
from subprof.quiet import known_noise_filtered  # noqa: E402
from subprof.results import ResultLog, error_pct, now_iso  # noqa: E402

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ which optimizer ran


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimizerInfo:
    """What subprof calls the optimizer a run used: its method (None: not one subprof models), whose code runs it,
    rank / update gap / state bits when it says, per-layer updates, its class, and caveats for the comparison."""

    method: str | None
    implementation: str = "subprof"
    rank: int | None = None
    update_gap: int | None = None
    state_bits: int | None = None
    layerwise: bool = False
    method_options: dict = field(default_factory=dict)
    label: str = ""
    notes: tuple[str, ...] = ()


def _unwrap(optimizer: Any) -> Any:
    """The optimizer under accelerate's `AcceleratedOptimizer` (the Trainer's wrapper)."""
    while type(optimizer).__name__ == "AcceleratedOptimizer":
        optimizer = optimizer.optimizer
    return optimizer


def _label(opt: Any) -> str:
    return f"{type(opt).__module__.split('.')[0]}.{type(opt).__name__}"


def _subprof(opt: Any) -> OptimizerInfo | None:
    """subprof's `SubspaceAdamW`: the projected group names method, rank, gap and options."""
    from subprof.optim import SubspaceAdamW

    if not isinstance(opt, SubspaceAdamW):
        return None
    group = next((g for g in opt.param_groups if g.get("method")), opt.param_groups[0])
    return OptimizerInfo(method=group.get("method") or "adamw", rank=group.get("rank"),
                         update_gap=group.get("update_gap"), state_bits=group["state_bits"],
                         method_options=dict(group.get("method_options") or {}), label=_label(opt))


def _galore_torch(opt: Any) -> OptimizerInfo | None:
    """galore-torch 1.0's GaLoreAdamW / GaLoreAdamW8bit (classes `galore_torch.adamw.AdamW` and
    `galore_torch.adamw8bit.AdamW8bit`; what transformers' `optim="galore_adamw[_8bit][_layerwise]"` builds): the
    groups with a `rank` are projected."""
    module = type(opt).__module__
    if not module.startswith("galore_torch"):
        return None
    if module not in ("galore_torch.adamw", "galore_torch.adamw8bit"):
        return OptimizerInfo(method=None, label=_label(opt),
                             notes=(f"{module}.{type(opt).__name__}: not a method subprof models",))
    group = next((g for g in opt.param_groups if "rank" in g), {})
    return OptimizerInfo(method="galore", implementation="galore-torch", rank=group.get("rank"),
                         update_gap=group.get("update_proj_gap"), state_bits=8 if module.endswith("8bit") else None,
                         label=_label(opt))


def _adamw(opt: Any) -> OptimizerInfo | None:
    """torch's AdamW, or bitsandbytes' 8-bit AdamW; torch's fused and per-tensor implementations allocate less in
    the step than the foreach one the estimate counts (CUDA's default)."""
    if isinstance(opt, torch.optim.AdamW):
        style = "fused" if opt.defaults.get("fused") else "foreach" if opt.defaults.get("foreach") else "default"
        notes = () if style == "foreach" else (
            f"torch AdamW ({style}): the estimate counts the foreach step's temporaries (one state-sized copy of "
            f"every moment); fused and per-tensor steps allocate none or one tensor's, so the optimizer_step phase "
            f"is over-estimated",)
        return OptimizerInfo(method="adamw", label=f"{_label(opt)} ({style})", notes=notes)
    if type(opt).__module__.startswith("bitsandbytes") and "Adam" in type(opt).__name__:
        bits = 8 if "8bit" in type(opt).__name__ or opt.defaults.get("optim_bits") == 8 else 32
        return OptimizerInfo(method="adamw", state_bits=bits, label=_label(opt))
    return None


RECOGNISERS: tuple[Callable[[Any], OptimizerInfo | None], ...] = (_subprof, _galore_torch, _adamw)


def recognise_optimizer(optimizer: Any) -> OptimizerInfo:
    """The method behind a Trainer's optimizer: unwrapped from accelerate's wrapper, from subprof's
    `LayerwiseOptimizer` (`inner`) and from transformers' `LayerWiseDummyOptimizer` (one optimizer per parameter
    in `optimizer_dict`, stepped in gradient hooks: `optim="galore_adamw_layerwise"`), then read by `RECOGNISERS`."""
    opt = _unwrap(optimizer)
    layerwise = False
    if hasattr(opt, "inner") and type(opt).__name__ == "LayerwiseOptimizer":
        opt, layerwise = opt.inner, True
    elif getattr(opt, "optimizer_dict", None):
        inners = list(opt.optimizer_dict.values())
        projected = [o for o in inners if any("rank" in g or g.get("method") for g in o.param_groups)]
        opt, layerwise = (projected or inners)[0], True
    for recognise in RECOGNISERS:
        info = recognise(opt)
        if info is not None:
            return OptimizerInfo(**{**{k: getattr(info, k) for k in info.__slots__}, "layerwise": layerwise})
    return OptimizerInfo(method=None, label=_label(opt),
                         notes=(f"{_label(opt)} is neither subprof's, galore-torch's nor an AdamW: no estimate "
                                f"(pass method=… to SubprofCallback to compare with one)",))


def _optimizers(optimizer: Any) -> list[Any]:
    opt = _unwrap(optimizer)
    if getattr(opt, "optimizer_dict", None):
        return list({id(o): o for o in opt.optimizer_dict.values()}.values())
    return [getattr(opt, "inner", opt)]


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every distinct tensor of dimension ≥ 1 in the optimizer's state (0-d step counters left out),
    including tensors held by helper objects (galore-torch's `GaLoreProjector.ortho_matrix`)."""
    found: dict[int, torch.Tensor] = {}
    for opt in _optimizers(optimizer):
        for st in opt.state.values():
            for val in st.values():
                for t in [val] if isinstance(val, torch.Tensor) else list(getattr(val, "__dict__", {}).values()):
                    if isinstance(t, torch.Tensor) and t.dim() > 0:
                        found[id(t)] = t
    return sum(t.numel() * t.element_size() for t in found.values())


# --------------------------------------------------------------------------------------- the run's configuration


def model_config(model: torch.nn.Module) -> ModelConfig:
    """subprof's `ModelConfig` of a live transformers model: the catalogue preset with the same weights when there
    is one (so the row sits beside `bench` rows of that preset), else its own config named after it."""
    raw = model.config.to_dict()
    cfg = model_from_config(raw, str(getattr(model.config, "_name_or_path", "") or raw.get("model_type", "model")))
    for name in model_names():
        preset = load_model(name)
        if (preset.family, preset.params, preset.linear_shapes(), preset.vocab, preset.tied) == \
                (cfg.family, cfg.params, cfg.linear_shapes(), cfg.vocab, cfg.tied):
            return preset
    return cfg


def _checkpointing(model: torch.nn.Module, args: Any) -> bool:
    """Whether the model recomputes its layers in backward: asked for in the arguments or switched on in the model
    (transformers 5 names both `activation_checkpointing`, earlier versions `gradient_checkpointing`)."""
    new = hasattr(type(model), "is_activation_checkpointing")
    in_model = getattr(model, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False)
    return bool(getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False)
                or in_model)


def training_dtype(model: torch.nn.Module, args: Any) -> str:
    """subprof's dtype name: 2-byte weights train in `bf16`; fp32 weights under `--bf16`/`--fp16` autocast are
    `mixed`, else `fp32`."""
    if next(model.parameters()).element_size() == 2:
        return "bf16"
    return "mixed" if args.bf16 or args.fp16 else "fp32"


# ------------------------------------------------------------------------------------------------- the callback


class _RunTracker(PhaseTracker):
    """MemTracker over a whole Trainer run: every micro-batch's forward is a new root forward (MemTracker refuses a
    second one without `reset_mod_stats`, which the bench's cpu backend calls once per step)."""

    def __init__(self, root: torch.nn.Module) -> None:
        super().__init__()
        self.root = root

    def _pre_fw_hook(self, module: torch.nn.Module, inputs: Any) -> None:
        if module is self.root and not self._mod_tracker.is_bw:
            self.reset_mod_stats()
        super()._pre_fw_hook(module, inputs)

    def enter_phase(self, name: str) -> None:
        self.phase = name
        self.phase_peak.setdefault(name, self.current_total())
        self.phase_snap.setdefault(name, _flat(self._curr_mem_snap))


class SubprofCallback(TrainerCallback):
    """Add to a `Trainer` (`callbacks=[SubprofCallback(out)]`): records the run's peak memory, step times, tokens/s
    and optimizer-state bytes and, when training ends, appends one bench-style row with subprof's estimate for the
    same configuration to `out` (module docstring). `method`, `rank`, `update_gap`, `state_bits`, `method_options`
    override what is read off the optimizer; `calibration` is the estimate's GPU-side calibration (default: the
    H100 fit)."""

    def __init__(self, out: str | Path = "reports/hf_trainer.jsonl", *, method: str | None = None,
                 rank: int | None = None, update_gap: int | None = None, state_bits: int | None = None,
                 method_options: dict | None = None, calibration: Calibration | None = None) -> None:
        self.log = ResultLog(out)  # an unwritable path fails now, before training
        if method is not None:
            get_method(method)  # an unknown name fails now too
        self.overrides = {k: v for k, v in dict(method=method, rank=rank, update_gap=update_gap,
                                                state_bits=state_bits, method_options=method_options).items()
                          if v is not None}
        self.calibration = calibration
        self.row: dict | None = None

    # --- recording ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model, self.optimizer = model, optimizer
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.times: list[float] = []
        self.step_tokens: list[int] = []
        self.shapes: set[tuple[int, int]] = set()
        self.masked = False
        self.phases: dict[str, int] = {}
        self.reserved = 0
        self.steps = 0
        self._tokens = 0
        self._current: str | None = None
        method = self.overrides.get("method") or recognise_optimizer(optimizer).method
        self._projected = method is not None and get_method(method).project
        self._hook = model.register_forward_pre_hook(self._seen, with_kwargs=True)
        self._stack = contextlib.ExitStack()
        self.tracker: _RunTracker | None = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.phases["model_built"] = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.tracker = _RunTracker(model)
            self.tracker.track_external(model, *_optimizers(optimizer))
            self._stack.enter_context(known_noise_filtered())  # ModTracker's re-entered-module warning
            self._stack.enter_context(self.tracker)
            self.tracker._peak_mem = {}  # peak from here, as the cpu backend starts it
            self.phases["model_built"] = self.tracker.current_total()

    def _seen(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("labels")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self.shapes.add((int(ids.shape[0]), int(ids.shape[1])))
            self._tokens += ids.numel()
        self.masked |= kwargs.get("attention_mask") is not None

    def _phase(self, name: str | None) -> None:
        """End the current phase (CUDA: its peak read) and start `name` (None: between phases)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            if self._current is not None:
                self.phases[self._current] = max(self.phases.get(self._current, 0),
                                                 torch.cuda.max_memory_allocated(self.device))
                self.reserved = max(self.reserved, torch.cuda.max_memory_reserved(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        elif name is not None:
            self.tracker.enter_phase(name)
        else:
            self.tracker.phase = "idle"
        self._current = name

    def on_step_begin(self, args, state, control, **kwargs):
        self._phase("forward_backward")
        self._tokens = 0
        self._t0 = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        first = self.steps == 0 and self._projected
        self._phase("projection_refresh" if first else "optimizer_step")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._phase(None)

    def on_step_end(self, args, state, control, **kwargs):
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - self._t0)
        self.step_tokens.append(self._tokens)
        self.steps += 1

    def close(self) -> None:
        """Stop recording: the forward hook removed, the CPU tracker left. `on_train_end` calls it; call it yourself
        when `trainer.train()` raised, or the tracker stays active in this process."""
        self._hook.remove()
        self._stack.close()

    def on_train_end(self, args, state, control, **kwargs):
        self.close()
        if not state.is_world_process_zero:
            return
        self.row = self.build_row(args, state)
        self.log.append(self.row)
        err = self.row.get("error_pct")
        log.info("subprof: peak %.3f GiB measured, %s", self.row["peak_allocated_bytes"] / 2**30,
                 f"estimate {err:+.2f}%" if err is not None else self.row.get("estimate_error", "no estimate"))

    # --- the row --------------------------------------------------------------------------------------------
    def _measured(self) -> dict:
        if self.cuda:
            self._phase(None)
            peak = max((v for k, v in self.phases.items() if k != "model_built"), default=0)
            out = {"peak_allocated_bytes": peak, "peak_reserved_bytes": self.reserved,
                   "device": torch.cuda.get_device_name(self.device), "cuda": torch.version.cuda}
        else:
            tr = self.tracker
            snap = _flat(tr._peak_mem_snap)
            self.phases.update({k: v for k, v in tr.phase_peak.items() if k != "idle"})
            out = {"peak_allocated_bytes": snap.pop("total", 0), "peak_reserved_bytes": None, "categories": snap,
                   "device": f"cpu ({torch.get_num_threads()} threads)", "threads": torch.get_num_threads()}
        return {**out, "device_used_bytes": None, "phases": dict(self.phases)}

    def build_row(self, args, state) -> dict:
        """The bench-style row of the run (module docstring), with the estimate when one applies."""
        import transformers

        info = recognise_optimizer(self.optimizer)
        losses = [float(e["loss"]) for e in state.log_history if "loss" in e]
        batch = max((b for b, _ in self.shapes), default=args.per_device_train_batch_size)
        seq = max((s for _, s in self.shapes), default=None)
        row: dict[str, Any] = {
            "status": "ok" if all(math.isfinite(x) for x in losses) else "diverged", "date": now_iso(),
            "harness": "hf-trainer", "backend": "cuda" if self.cuda else "cpu", "steps": self.steps,
            "optimizer_class": info.label, "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            "param_bytes": sum(p.numel() * p.element_size() for p in self.model.parameters()),
            "attention_mask_seen": self.masked, "sequences_seen": sorted(self.shapes), "losses": losses,
            "torch": torch.__version__, "transformers": transformers.__version__, **self._measured(),
        }
        if self.times:
            row.update(step_fields(self.times, self.step_tokens))
        notes = list(info.notes)
        if self.masked:
            notes.append("an attention_mask reached the model: the estimate assumes causal attention without one")
        if len({s for _, s in self.shapes}) > 1:
            shortest = min(s for _, s in self.shapes)
            notes.append(f"sequence lengths varied ({shortest}–{seq}): estimated at the longest")
        try:
            case = self._case(args, info, batch, seq)
        except SubprofError as exc:
            name = str(getattr(self.model.config, "_name_or_path", "") or self.model.config.model_type)
            return {"model": name, **row, "estimate_error": str(exc), "notes": notes}
        from subprof.measure.runner import estimate_fields

        row = {**case.row_fields(), **row, **estimate_fields(case, self.calibration), "notes": notes}
        row["error_pct"] = error_pct(row)
        return row

    def _case(self, args, info: OptimizerInfo, batch: int, seq: int | None) -> Case:
        """The bench case this run is: its TrainConfig, backend, steps, implementation and data-parallel layout."""
        method = self.overrides.get("method", info.method)
        if method is None:
            raise SubprofError(" ".join(info.notes) or f"{info.label}: no method subprof models")
        if seq is None:
            raise SubprofError("no input_ids reached the model's forward: the sequence length is unknown")
        picked = {"rank": info.rank, "update_gap": info.update_gap, "state_bits": info.state_bits,
                  "method_options": info.method_options, **self.overrides}
        config = TrainConfig(model=model_config(self.model), method=method, rank=picked["rank"],
                             update_gap=picked["update_gap"], state_bits=picked["state_bits"],
                             layerwise=info.layerwise, dtype=training_dtype(self.model, args), batch=batch, seq=seq,
                             checkpointing=_checkpointing(self.model, args),
                             accumulation=args.gradient_accumulation_steps,
                             method_options=dict(picked["method_options"] or {}))
        world = max(1, int(args.world_size))
        strategy = None if world == 1 else "fsdp" if args.fsdp else "ddp"
        return Case(config=config, backend="cuda" if self.cuda else "cpu", steps=max(1, self.steps),
                    implementation=info.implementation if method == info.method else "subprof", world_size=world,
                    strategy=strategy)


def step_fields(times: list[float], tokens: list[int]) -> dict:
    """bench's time fields (`readings.step_times`): every step's seconds, the first (it holds a first projection
    refresh), the median of the later ones, and tokens/s = the median step's tokens (all micro-batches of an
    optimizer step, as the forward counted them) / the median step time."""
    later = times[1:] or times
    median = statistics.median(later)
    return {"step_times_s": [round(t, 5) for t in times], "first_step_s": round(times[0], 5),
            "median_step_s": round(median, 5),
            "tokens_per_s": round(statistics.median(tokens[1:] or tokens) / median, 1) if median else None}
