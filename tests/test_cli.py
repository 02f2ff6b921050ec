"""The command line as a user meets it: real subprocesses, one-line errors with exit code 2, JSON shapes."""

import json
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "subprof", *args], capture_output=True, text=True, timeout=120)


def test_plan_7b_24gb_json_has_recommendation():
    out = run("plan", "--model", "7b", "--gpu-mem", "24GB", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    rec = data["recommendation"]
    for key in ("method", "rank", "update_gap", "state_bits", "layerwise", "batch", "checkpointing",
                "estimated_peak_allocated_bytes", "device_used_bytes", "tokens_per_s"):
        assert key in rec
    assert rec["device_used_bytes"] <= data["usable_bytes"]
    assert isinstance(data["candidates"], list) and data["candidates"]


def test_plan_table_names_the_unit_used():
    out = run("plan", "--model", "7b", "--gpu-mem", "24GB", "--explain")
    assert out.returncode == 0, out.stderr
    assert "GB" in out.stdout and "10^n" in out.stdout
    assert out.stdout.startswith("recommended")


def test_estimate_json_schema():
    out = run("estimate", "--model", "1b", "--method", "galore", "--rank", "512", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"peak_allocated_bytes", "device_used_bytes", "components", "phases"} <= set(data)
    assert data["peak_allocated_bytes"] == max(sum(p.values()) for p in data["phases"].values())


def test_models_and_gpus_json():
    models = json.loads(run("models", "--json").stdout)
    assert any(m["name"] == "7b" and m["params"] == 6738415616 for m in models)
    gpus = json.loads(run("gpus", "--json").stdout)
    assert any(g["key"] == "h100-sxm" for g in gpus)


@pytest.mark.parametrize("args, message", [
    (["plan", "--model", "7bb", "--gpu-mem", "24GB"], "unknown model"),
    (["plan", "--model", "7b", "--gpu-mem", "24XB"], "unit"),
    (["plan", "--model", "7b", "--gpu-mem", "-5GB"], "positive"),
    (["plan", "--model", "7b", "--gpu-mem", "nosuchcard"], "neither a size"),
    (["plan", "--model", "7b", "--gpu-mem", "24GB", "--methods", "galorex"], "unknown method"),
    (["estimate", "--model", "7b", "--method", "galore", "--rank", "0"], "rank"),
    (["estimate", "--model", "7b", "--method", "galore", "--rank", "8192"], "rank"),
    (["estimate", "--model", "7b", "--batch", "0"], "batch"),
    (["estimate", "--model", "/nonexistent/config.json"], "does not exist"),
    (["estimate", "--model", "7b", "--dtype", "fp8"], "dtype"),
    (["burst", "--model", "tiny", "--methods", "galore", "--batch", "8", "--nproc", "3"], "equal shares"),
    (["burst", "--model", "tiny", "--methods", "galore", "--nproc", "2", "--strategy", "hsdp"], "fsdp or ddp"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert message in out.stderr.lower() or message in out.stderr


def test_non_llama_config_is_rejected(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    out = run("estimate", "--model", str(path))
    assert out.returncode == 2 and "LLaMA-shaped decoders only" in out.stderr and "Traceback" not in out.stderr


def test_plan_and_estimate_import_neither_torch_nor_transformers():
    code = ("import sys; from subprof.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['plan', '--model', '7b', '--gpu-mem', '24GB', '--json']); "
            "assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['estimate', '--model', '7b', '--method', 'galore', '--rank', '1024']); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]")
