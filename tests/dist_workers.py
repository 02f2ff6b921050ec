"""What the ranks of the multi-process tests run (`subprof.train.launch.run_ranks` spawns them, so these live in an
importable module, not in a test file) and the single-process references they are compared with.

The job: a LLaMA model in fp32 — the catalogue's `tiny` (transformers) or `MiniLlama` (the same kinds of weights in
plain torch, for jobs that should not pay transformers' import in every rank) — the same global batch every step
(4 sequences × 16 tokens; rank k of W trains on rows 4k/W … 4(k+1)/W − 1), `build_optimizer` with each method's
published lr, rank 8, the update gap `Job.gap` for periodic methods, and canonical SVD signs where a method keeps its
moments across a refresh or walks from its SVD start (`svd_signs`, see `subprof.methods.rule.canonical_signs`).
"""

from __future__ import annotations

import hashlib
import time
import types
from dataclasses import dataclass, replace

import torch

GLOBAL_BATCH, SEQ, RANK = 4, 16, 8


@dataclass(frozen=True)
class Run:
    """One training configuration: method, state bits, per-layer or not, how the ranks hold the model ("fsdp": the
    declared placement; "fsdp-default": FSDP2's Shard(0) everywhere; "ddp"), the model, and training length."""

    method: str
    bits: int
    layerwise: bool = False
    strategy: str = "fsdp"
    model: str = "tiny"
    steps: int = 3
    gap: int = 2
    clip: float | None = None  # global-norm clipping: clip_grad_norm_ (global step) or lagged (per-layer)
    base: str = "adamw"  # the base optimizer (`subprof.methods.bases`)

    @property
    def key(self) -> str:
        return (f"{self.method}-{self.bits}{'-lw' if self.layerwise else ''}-{self.strategy}-{self.model}"
                + (f"-clip{self.clip}" if self.clip else "") + (f"-{self.base}" if self.base != "adamw" else ""))

    @property
    def reference_key(self) -> tuple:
        """Runs with equal keys compute the same thing in one process (per-layer = global step, bit for bit, unless
        clipping: per-layer clipping lags one step)."""
        return (self.method, self.bits, self.model, self.steps, self.gap, self.clip,
                bool(self.clip and self.layerwise), self.base)


# ------------------------------------------------------------------------------------------------ models and data


class MiniLlama(torch.nn.Module):
    """LLaMA's parameter names and kinds in plain torch: embeddings, per layer q/k/v/o (64×64), gate/up (172×64),
    down (64×172, P on the left; 172 splits evenly over 2 and 4 ranks), a norm weight; final norm, lm_head; vocab
    256. The forward is not attention — only the optimizer's view of the weights matters here."""

    def __init__(self, layers: int = 2, hidden: int = 64, inter: int = 172, vocab: int = 256) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(vocab, hidden)
        self.model.layers = torch.nn.ModuleList()
        for _ in range(layers):
            layer = torch.nn.Module()
            layer.self_attn = torch.nn.Module()
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(layer.self_attn, name, torch.nn.Linear(hidden, hidden, bias=False))
            layer.mlp = torch.nn.Module()
            layer.mlp.gate_proj = torch.nn.Linear(hidden, inter, bias=False)
            layer.mlp.up_proj = torch.nn.Linear(hidden, inter, bias=False)
            layer.mlp.down_proj = torch.nn.Linear(inter, hidden, bias=False)
            layer.input_layernorm = torch.nn.RMSNorm(hidden)
            layer.forward = types.MethodType(_layer_forward, layer)
            self.model.layers.append(layer)
        self.model.norm = torch.nn.RMSNorm(hidden)
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> types.SimpleNamespace:
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x)
        logits = self.lm_head(self.model.norm(x))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1))
        return types.SimpleNamespace(loss=loss)


def _layer_forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    a, m = layer.self_attn, layer.mlp
    y = layer.input_layernorm(x)
    x = x + a.o_proj(torch.tanh(a.q_proj(y)) * a.k_proj(y) + a.v_proj(y))
    return x + m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))


def build(model: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if model == "mini":
        return MiniLlama()
    from subprof.catalog import load_model
    from subprof.measure.model import build_model

    return build_model(load_model("tiny"), dtype="fp32", device="cpu", seed=0)


def vocab(model: str) -> int:
    return 256 if model == "mini" else 8192


def batch(step: int, model: str, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's rows of the global batch of `step`: runs of consecutive tokens from random starts among the first
    64 ids — a rule the model learns within a few steps, so the loss falls by nats and "a share of its change" is a
    real tolerance (random tokens left it where it started)."""
    gen = torch.Generator().manual_seed(1000 + step)
    starts = torch.randint(0, 64, (GLOBAL_BATCH, 1), generator=gen)
    x = (starts + torch.arange(SEQ)) % vocab(model)
    per = GLOBAL_BATCH // world
    return x[rank * per:(rank + 1) * per]


def method_options(method: str) -> dict:
    from subprof.methods import get_method

    spec = get_method(method)
    options = {"svd_signs": "canonical"} if "svd_signs" in spec.option_defaults else {}
    if "total_steps" in spec.option_defaults:
        options["total_steps"] = 20  # Ori: every column active from step 3 on
    return options


def optimizer(model: torch.nn.Module, run: Run, accumulation_steps: int = 1) -> torch.optim.Optimizer:
    from subprof.methods import get_method
    from subprof.optim import build_optimizer

    spec = get_method(run.method)
    extra = dict(rank=RANK, update_gap=run.gap if spec.default_update_gap > 1 else None,
                 **method_options(run.method)) if spec.project else {}
    if run.layerwise:
        extra.update(accumulation_steps=accumulation_steps, max_grad_norm=run.clip)
    return build_optimizer(model, run.method, state_bits=run.bits, layerwise=run.layerwise, base=run.base, **extra)


def wrap(model: torch.nn.Module, run: Run) -> torch.nn.Module:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from subprof.optim.sharding import wrap_model

    if run.strategy == "fsdp-default":
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    return wrap_model(model, run.method, run.strategy)


# ------------------------------------------------------------------------------------------------ training


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, run: Run, rank: int = 0, world: int = 1,
          start: int = 0, steps: int | None = None, on_step=None) -> None:
    """Steps start … start + steps − 1 on this rank's rows of each global batch."""
    for step in range(start, start + (run.steps if steps is None else steps)):
        x = batch(step, run.model, rank, world)
        model(input_ids=x, labels=x).loss.backward()
        if run.clip and not run.layerwise:  # FSDP2: the global norm over DTensor gradients (one all-reduce)
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.clip)
        if on_step is None:
            opt.step()
        else:
            on_step(step, opt)
        opt.zero_grad(set_to_none=True)


def train_one_process(model: torch.nn.Module, opt: torch.optim.Optimizer, run: Run, world: int, start: int = 0,
                      steps: int | None = None) -> None:
    """One process on the whole global batch, its gradient summed as data parallelism sums it: the mean loss of
    each rank's rows backpropagated in turn (autograd adds), then divided by the rank count — so the optimizer gets
    the reduced gradient's bits (2 ranks: a + b in either order, ÷2 exact) and any difference left comes from the
    optimizer."""
    lagged = bool(run.clip and run.layerwise)  # per-layer with clipping: its hooks accumulate the parts
    for step in range(start, start + (run.steps if steps is None else steps)):
        for k in range(world):
            x = batch(step, run.model, k, world)
            (model(input_ids=x, labels=x).loss / (world if lagged else 1)).backward()  # ÷2: exact
        if not lagged:
            for p in model.parameters():
                p.grad.div_(world)
            if run.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, run: Run) -> float:
    """The loss on a fixed batch no step trained on (every rank feeds the whole batch: the same value everywhere)."""
    x = batch(10_000, run.model)
    return float(model(input_ids=x, labels=x).loss)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {n.removeprefix("module."): (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in model.named_parameters()}


def digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for name in sorted(weights):
        h.update(weights[name].numpy().tobytes())
    return h.hexdigest()


def reference(run: Run, world: int) -> dict:
    """Weights and (initial, final) evaluation loss of `train_one_process` (the global step: per-layer updates
    compute the same bits)."""
    model = build(run.model)
    lagged = bool(run.clip and run.layerwise)
    opt = optimizer(model, run if lagged else replace(run, layerwise=False), accumulation_steps=world)
    before = eval_loss(model, run)
    train_one_process(model, opt, run, world)
    return {"weights": full_weights(model), "loss": (before, eval_loss(model, run))}


def deviations(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
               init: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per parameter, max|p − p_ref| / max|p_ref − p_init|: the distance to one process as a share of how far
    training moved that parameter."""
    return {n: float((got[n] - ref[n]).abs().max() / (ref[n] - init[n]).abs().max().clamp_min(1e-12)) for n in init}


# ------------------------------------------------------------------------------------------------ rank functions


def state_bytes(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, int]:
    """Bytes this rank holds in `optimizer.state` per parameter name (as the memory model counts them)."""
    from subprof.optim import state_tensor_bytes

    names = {id(p): n.removeprefix("module.") for n, p in model.named_parameters()}
    return {names[id(p)]: state_tensor_bytes(st) for p, st in opt.state.items()}


def train_runs(rank: int, world: int, runs: list[Run], references: str) -> dict:
    """Rank function: every run in turn. Each rank returns per run the digest of its final weights, the evaluation
    loss, the bytes of its optimizer state per parameter and — global FSDP2 steps — the bytes of the collectives
    every `opt.step()` issued, by op; rank 0 also the deviations from the one-process reference."""
    from subprof.optim.collectives import CollectiveCounter

    refs = torch.load(references, weights_only=False) if rank == 0 else None
    out = {}
    for run in runs:
        started = time.perf_counter()
        model = wrap(build(run.model), run)
        opt = optimizer(model, run)
        comm: list[dict[str, int]] = []

        def counted(step: int, o: torch.optim.Optimizer) -> None:
            with CollectiveCounter() as counter:
                o.step()
            comm.append(counter.by_op())

        count = run.strategy == "fsdp" and not run.layerwise
        train(model, opt, run, rank, world, on_step=counted if count else None)
        weights = full_weights(model)
        ref = refs[run.reference_key] if refs else None
        held = state_bytes(opt, model)  # before eval_loss: FSDP2 keeps the root unsharded after a no-grad forward
        out[run.key] = {"digest": digest(weights), "state_bytes": held, "loss": eval_loss(model, run),
                        "comm": comm, "ref_loss": ref["loss"] if ref else None,
                        "deviations": deviations(weights, ref["weights"], refs[("init", run.model)]) if ref else None,
                        "seconds": time.perf_counter() - started}
    return out


def checkpoint_save(rank: int, world: int, runs: list[Run], folder: str) -> dict:
    """Train `run.steps`, save to folder/<key>, train `run.steps` more: the uninterrupted run's final weights; and
    the same checkpoint resumed on these ranks by a fresh model and optimizer."""
    from subprof.optim.checkpoint import save_checkpoint

    out = {}
    for run in runs:
        model = wrap(build(run.model), run)
        opt = optimizer(model, run)
        train(model, opt, run, rank, world)
        save_checkpoint(f"{folder}/{run.key}", model, opt)
        train(model, opt, run, rank, world, start=run.steps)
        out[run.key] = full_weights(model)
    return {"uninterrupted": out, "resumed": checkpoint_resume(rank, world, runs, folder)}


def checkpoint_resume(rank: int, world: int, runs: list[Run], folder: str) -> dict:
    """Load folder/<key> on this job's ranks and train the last `run.steps` steps: the resumed run's weights."""
    from subprof.optim.checkpoint import load_checkpoint

    out = {}
    for run in runs:
        model = wrap(build(run.model), run)
        opt = optimizer(model, run)
        load_checkpoint(f"{folder}/{run.key}", model, opt)
        train(model, opt, run, rank, world, start=run.steps)
        out[run.key] = full_weights(model)
    return out


def resume_one_process(run: Run, folder: str, world: int) -> dict[str, torch.Tensor]:
    """The same resumption in this process, without a process group (gradients summed as `world` ranks sum them)."""
    from subprof.optim.checkpoint import load_checkpoint

    model = build(run.model)
    opt = optimizer(model, run)
    load_checkpoint(f"{folder}/{run.key}", model, opt)
    if run.layerwise:  # the hooks step at the first backward: the whole batch at once (equal to round-off)
        train(model, opt, run, start=run.steps)
    else:
        train_one_process(model, opt, run, world, start=run.steps)
    return full_weights(model)


def bad_inputs(rank: int, world: int) -> dict[str, str]:
    """The one-line errors of `build_optimizer` on models laid out in ways it refuses."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from subprof.errors import SubprofError
    from subprof.optim import build_optimizer

    mesh = init_device_mesh("cpu", (world,))
    out = {}

    def error(case: str, model: torch.nn.Module) -> None:
        try:
            build_optimizer(model, "galore", rank=RANK)
            out[case] = ""
        except SubprofError as exc:
            out[case] = str(exc)

    def distribute(model: torch.nn.Module, placement) -> torch.nn.Module:
        for name, module in model.named_modules():
            for pname, p in list(module.named_parameters(recurse=False)):
                setattr(module, pname, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [placement(name)])))
        return model

    model = MiniLlama()
    for layer in model.model.layers:  # the root (embeddings, lm_head) left unsharded
        fully_shard(layer, mesh=mesh)
    error("mixed", model)
    # down_proj (64×171) cut on its 171 columns, which do not split evenly over 2 ranks
    error("uneven", distribute(MiniLlama(inter=171), lambda name: Shard(1) if name.endswith("down_proj") else Shard(0)))
    error("replicated", distribute(MiniLlama(), lambda name: Replicate()))  # tensor-parallel style, not FSDP
    return out


def ci_job(rank: int, world: int, runs: list[Run], references: str, checkpoint_runs: list[Run], folder: str,
           burst: tuple | None = None) -> dict:
    """Everything the 2-rank tests need from one spawned job; `burst` = (case, settings, corpus): one case of
    `burst --nproc` as its ranks run it."""
    started = time.perf_counter()
    out = {"runs": train_runs(rank, world, runs, references)}
    out["seconds"] = {"runs": time.perf_counter() - started}
    out["checkpoints"] = checkpoint_save(rank, world, checkpoint_runs, folder)
    out["seconds"]["checkpoints"] = time.perf_counter() - started
    out["errors"] = bad_inputs(rank, world)
    out["seconds"]["errors"] = time.perf_counter() - started
    if burst is not None:
        from subprof.train.parallel import Replica
        from subprof.train.burst import run_burst

        case, settings, corpus = burst
        out["burst"] = run_burst(case, settings, corpus, replica=Replica(rank=rank, world=world, strategy="fsdp",
                                                                          device="cpu"))
    out["seconds"]["burst"] = time.perf_counter() - started
    return out


def four_rank_job(rank: int, world: int, runs: list[Run], references: str, checkpoint_runs: list[Run],
                  folder: str) -> dict:
    """Everything the 4-rank tests need from one spawned job."""
    return {"runs": train_runs(rank, world, runs, references),
            "resumed": checkpoint_resume(rank, world, checkpoint_runs, folder)}
