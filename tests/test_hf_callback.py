"""`SubprofCallback` on a real Hugging Face `Trainer`: a 20-step run of the `tiny` preset (random init, synthetic
tokens) writes one bench-style row whose CPU-tracked peak lies within 3% of subprof's estimate — the tolerance the
traced and CPU rows are held to (`tests/test_trace_agreement.py`; CPU rows against the model-side estimate,
`results.error_pct`) — with the method read off the optimizer."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from transformers import AutoModelForCausalLM, Trainer, TrainingArguments  # noqa: E402

from subprof.catalog import load_model  # noqa: E402
from subprof.config import TrainConfig  # noqa: E402
from subprof.errors import SubprofError  # noqa: E402
from subprof.integrations.hf import SubprofCallback, recognise_optimizer  # noqa: E402
from subprof.measure.model import hf_config  # noqa: E402
from subprof.plan.memory import estimate  # noqa: E402
from subprof.results import read_rows  # noqa: E402

STEPS, BATCH, SEQ = 20, 4, 128  # logits-bound at this size: the peak is forward/backward's, whatever AdamW runs
TOLERANCE_PCT = 3.0


class Tokens(torch.utils.data.Dataset):
    """Random token ids, labels = inputs, no attention_mask (as the bench steps run)."""

    def __init__(self, vocab: int, n: int, seq: int) -> None:
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(hf_config(load_model("tiny")))


def train(tmp_path, *, model=None, optimizers=(None, None), steps: int = STEPS, **args) -> dict:
    """A `steps`-step Trainer run of tiny (`model`, else a fresh one) with the callback; the row it wrote."""
    out = tmp_path / "hf.jsonl"
    model = model or tiny_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine
    try:
        trainer = Trainer(model=model, train_dataset=Tokens(model.config.vocab_size, steps * BATCH, SEQ),
                          optimizers=optimizers, callbacks=[SubprofCallback(out)],
                          args=TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=BATCH,
                                                 max_steps=steps, learning_rate=1e-3, logging_steps=5,
                                                 save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                                                 dataloader_num_workers=0, **args))
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    rows = read_rows(out)
    assert len(rows) == 1
    return rows[0]


@pytest.fixture(scope="module")
def adamw_row(tmp_path_factory):
    return train(tmp_path_factory.mktemp("adamw"))


def test_a_20_step_trainer_run_writes_a_bench_row_next_to_the_estimate(adamw_row):
    row = adamw_row
    assert row["status"] == "ok" and row["harness"] == "hf-trainer" and row["backend"] == "cpu"
    assert (row["model"], row["method"], row["dtype"], row["batch"], row["seq"], row["accumulation"]) == \
        ("tiny", "adamw", "fp32", BATCH, SEQ, 1)
    assert row["steps"] == STEPS and len(row["step_times_s"]) == STEPS and row["tokens_per_s"] > 0
    assert row["estimated_peak_allocated_bytes"] > 0 and "error_pct" in row


def test_its_cpu_peak_is_within_the_cpu_backends_tolerance_of_the_estimate(adamw_row):
    assert abs(adamw_row["error_pct"]) <= TOLERANCE_PCT, adamw_row


CHECKPOINTING = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
    else "gradient_checkpointing"


@pytest.mark.parametrize("args, read", [
    ({"gradient_accumulation_steps": 2}, {"accumulation": 2}),
    ({CHECKPOINTING: True}, {"checkpointing": "full"}),
    ({"bf16": True}, {"dtype": "mixed"}),  # fp32 weights under bf16 autocast
], ids=["accumulation", "checkpointing", "bf16-autocast"])
def test_accumulation_checkpointing_and_autocast_come_from_the_training_arguments(tmp_path, args, read):
    row = train(tmp_path, steps=4, **args)
    assert {k: row[k] for k in read} == read
    assert abs(row["error_pct"]) <= TOLERANCE_PCT, row


def test_it_records_the_optimizer_states_the_run_held(adamw_row):
    params = load_model("tiny").params
    assert adamw_row["optimizer_state_bytes"] == 2 * 4 * params  # two fp32 moments per parameter
    assert adamw_row["param_bytes"] == 4 * params
    built = adamw_row["phases"]["model_built"]
    assert 0 <= built - 4 * params < 1024  # the weights and the rotary embedding's inv_freq buffers
    assert adamw_row["phases"]["optimizer_step"] > built


def test_a_subprof_optimizer_is_recognised_and_estimated_as_its_method(tmp_path):
    from subprof.optim import build_optimizer

    model = tiny_model()
    opt = build_optimizer(model, "galore", rank=16, update_gap=50, lr=1e-3)
    info = recognise_optimizer(opt)
    assert (info.method, info.rank, info.update_gap, info.state_bits) == ("galore", 16, 50, 32)
    row = train(tmp_path, model=model, steps=6,
                optimizers=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)))
    assert (row["method"], row["rank"], row["update_gap"], row["implementation"]) == ("galore", 16, 50, "subprof")
    assert "projection_refresh" in row["phases"]
    assert abs(row["error_pct"]) <= TOLERANCE_PCT, row
    est = estimate(TrainConfig(model=load_model("tiny"), method="galore", rank=16, update_gap=50, dtype="fp32",
                               batch=BATCH, seq=SEQ))
    assert row["optimizer_state_bytes"] == est.components["optimizer_states"] + est.components["projection_matrices"]


def test_transformers_galore_optimizers_are_galore_torchs(tmp_path):
    pytest.importorskip("galore_torch")
    for optim, layerwise in (("galore_adamw", False), ("galore_adamw_layerwise", True)):
        args = TrainingArguments(output_dir=str(tmp_path), optim=optim, optim_target_modules=["attn", "mlp"],
                                 optim_args="rank=16, update_proj_gap=100, scale=0.25", report_to=[], use_cpu=True)
        trainer = Trainer(model=tiny_model(), args=args)
        info = recognise_optimizer(trainer.create_optimizer())
        assert (info.method, info.implementation, info.rank, info.update_gap, info.layerwise) == \
            ("galore", "galore-torch", 16, 100, layerwise)


def test_a_trainer_run_with_galore_torch_is_held_against_the_galore_estimate(tmp_path):
    pytest.importorskip("galore_torch")
    row = train(tmp_path, steps=6, optim="galore_adamw", optim_target_modules=["attn", "mlp"],
                optim_args="rank=16, update_proj_gap=100, scale=0.25")
    assert (row["method"], row["implementation"], row["rank"]) == ("galore", "galore-torch", 16)
    assert abs(row["error_pct"]) <= TOLERANCE_PCT, row


def test_another_optimizer_still_gets_its_measured_row_saying_why_there_is_no_estimate(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    row = train(tmp_path, model=model, steps=2,
                optimizers=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)))
    assert row["peak_allocated_bytes"] > 0 and "SGD" in row["estimate_error"]
    assert "estimated_peak_allocated_bytes" not in row


def test_an_unknown_method_override_fails_before_training(tmp_path):
    with pytest.raises(SubprofError, match="unknown"):
        SubprofCallback(tmp_path / "hf.jsonl", method="galoore")


def test_the_row_is_json_a_report_reads(adamw_row):
    from subprof.results import comparable_estimate, comparable_peak

    json.dumps(adamw_row)
    assert comparable_peak(adamw_row) == adamw_row["peak_allocated_bytes"]
    assert comparable_estimate(adamw_row) < adamw_row["estimated_peak_allocated_bytes"]  # less the CUDA runtime


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_it_reads_the_allocator_peaks(tmp_path):
    row = train(tmp_path, steps=5, use_cpu=False)
    assert row["backend"] == "cuda" and row["peak_reserved_bytes"] >= row["peak_allocated_bytes"] > 0
    assert row["error_pct"] is not None
