"""Hub ids and decoder families beyond LLaMA: `--model org/name` reads config.json from a Hugging Face cache laid out
here (no network: HF_HUB_OFFLINE=1, or a stand-in for `hf_hub_download`), and every family of `catalog.FAMILIES`
counts parameters and projected shapes as its transformers class builds them on the meta device, and runs under the
trace backend as that class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from subprof.catalog import FAMILIES, load_model, model_from_config
from subprof.errors import SubprofError

COMMIT = "0e9e39f249a16976918f6564b8830bc894c89659"
# meta-llama/Llama-3.1-8B config.json, the fields that decide sizes (values as published)
LLAMA_31_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
               "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
               "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "attention_bias": False,
               "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001,
               "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"}}


def lay_out_cache(cache: Path, repo_id: str, config: dict) -> Path:
    """huggingface_hub's cache layout: refs/main names the snapshot that holds config.json."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot / "config.json"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache in tmp_path, offline; load_model's memo cleared before and after."""
    cache = tmp_path / "hub"
    cache.mkdir()
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_model.cache_clear()
    yield cache
    load_model.cache_clear()


# ------------------------------------------------------------------------------------------------- Hub ids


def test_a_hub_id_is_read_from_the_cache(hub_cache):
    path = lay_out_cache(hub_cache, "meta-llama/Llama-3.1-8B", LLAMA_31_8B)
    cfg = load_model("meta-llama/Llama-3.1-8B")
    assert cfg.name == "meta-llama/Llama-3.1-8B" and cfg.source == str(path)
    assert cfg.params == 8_030_261_248  # Llama 3.1 8B as transformers counts it
    assert cfg.ref == "meta-llama/Llama-3.1-8B"  # rows and bench workers name it by its id


def test_hf_home_locates_the_cache_as_huggingface_hub_does(tmp_path, monkeypatch, hub_cache):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    lay_out_cache(tmp_path / "home" / "hub", "Qwen/Qwen3-0.6B", PUBLISHED["qwen3-0.6b"])
    assert load_model("Qwen/Qwen3-0.6B").family == "qwen3"


def test_offline_and_not_cached_is_one_line_naming_hf_hub_offline_the_cache_and_a_path(hub_cache):
    out = subprocess.run([sys.executable, "-m", "subprof", "estimate", "--model", "meta-llama/Llama-3.1-8B"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    message = out.stderr.strip()
    assert "HF_HUB_OFFLINE" in message and str(hub_cache) in message and "--model path/to/config.json" in message
    assert len([line for line in message.splitlines() if line.strip()]) == 1


def test_online_fetches_config_json_alone_into_the_cache(hub_cache, monkeypatch):
    import huggingface_hub

    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("cache_dir")))
        return str(lay_out_cache(Path(kwargs["cache_dir"]), repo_id, LLAMA_31_8B))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert load_model("meta-llama/Llama-3.1-8B").params == 8_030_261_248
    assert calls == [("meta-llama/Llama-3.1-8B", "config.json", str(hub_cache))]  # never weights


@pytest.mark.parametrize("error, says", [("RepositoryNotFoundError", "is no Hub model"),
                                         ("GatedRepoError", "hf auth login"),
                                         ("LocalEntryNotFoundError", "unreachable")])
def test_a_hub_failure_is_one_line_with_the_fix(hub_cache, monkeypatch, caplog, error, says):
    import logging

    import huggingface_hub

    def download(repo_id, filename, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise type(error, (Exception,), {})("404 Client Error.\nRepository Not Found for url: …")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(SubprofError) as err:
        load_model("nobody/no-such-model")
    text = str(err.value)
    assert "\n" not in text and says in text and "HF_HUB_OFFLINE" in text and "path/to/config.json" in text
    assert "Retrying" not in caplog.text  # huggingface_hub's retries are not shown: the error says it once


def test_a_hub_plan_imports_no_torch_transformers_or_huggingface_hub(hub_cache):
    lay_out_cache(hub_cache, "meta-llama/Llama-3.1-8B", LLAMA_31_8B)
    code = ("import sys; from subprof.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['plan', '--model', 'meta-llama/Llama-3.1-8B', '--gpu-mem', '80GB', "
            "'--json']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['estimate', '--model', 'meta-llama/Llama-3.1-8B', '--method', 'galore']); "
            "assert r.exit_code == 0, r.output; "
            "print(','.join(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_huggingface_hub_imports_no_torch():
    code = ("import sys; from huggingface_hub import hf_hub_download; "
            "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------------------- decoder families

SMALL = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256, "pad_token_id": 0,
         "bos_token_id": 0, "eos_token_id": 1}
VARIANTS = {"as-is": {}, "head_dim": {"head_dim": 24}, "untied": {"tie_word_embeddings": False},
            "tied": {"tie_word_embeddings": True}, "biases": {"attention_bias": True, "mlp_bias": True},
            "minimal": None}
# published configs, the fields that decide sizes (values as published on the Hub)
PUBLISHED = {
    "qwen3-0.6b": {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                   "tie_word_embeddings": True, "max_position_embeddings": 40960, "max_window_layers": 28,
                   "use_sliding_window": False, "sliding_window": None, "attention_bias": False},
    "gemma-2-2b": {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                   "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
                   "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 256,
                   "sliding_window": 4096, "max_position_embeddings": 8192, "pad_token_id": 0},
    "gemma-3-1b": {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
                   "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                   "vocab_size": 262144, "sliding_window": 512, "sliding_window_pattern": 6,
                   "query_pre_attn_scalar": 256, "max_position_embeddings": 32768, "pad_token_id": 0},
    "phi-3-mini-4k": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                      "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                      "sliding_window": 2047, "max_position_embeddings": 4096, "tie_word_embeddings": False,
                      "pad_token_id": 32000},
    "olmo-2-1b": {"model_type": "olmo2", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                  "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 100352,
                  "max_position_embeddings": 4096, "tie_word_embeddings": False, "pad_token_id": 100277},
}


def _small(family: str, variant: str) -> dict:
    """A small config of `family`; "minimal" leaves out every key but the required ones (the class defaults fill
    head_dim, key/value heads and tying as transformers fills them; 32 heads, which every default divides)."""
    if VARIANTS[variant] is None:
        return {"model_type": family, "hidden_size": 128, "num_attention_heads": 32, "pad_token_id": 0,
                **{k: SMALL[k] for k in ("intermediate_size", "num_hidden_layers", "vocab_size")}}
    return {"model_type": family, **SMALL, **VARIANTS[variant]}


def _meta_model(raw: dict):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in raw.items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(raw["model_type"], **kwargs))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_and_projected_shapes_equal_transformers_on_meta(family, variant):
    from subprof.optim.build import split_parameters

    raw = _small(family, variant)
    model = _meta_model(raw)
    cfg = model_from_config(raw, family)
    assert type(model).__name__ == FAMILIES[family].architecture
    assert cfg.params == sum(p.numel() for p in model.parameters())
    projected, _ = split_parameters(model)  # what the subspace methods project: GaLore's attn/mlp selection
    layer0 = {n.split("layers.0.")[1]: tuple(p.shape) for n, p in projected.items() if ".layers.0." in n}
    assert layer0 == {f"{s.name}.weight": (s.m, s.n) for s in cfg.linear_shapes()}
    assert sum(p.numel() for p in projected.values()) == cfg.projected_params


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_count_as_transformers_does(name):
    raw = PUBLISHED[name]
    assert model_from_config(raw, name).params == sum(p.numel() for p in _meta_model(raw).parameters())


def test_published_shapes_of_each_difference():
    qwen3, gemma2, phi3, olmo2 = (model_from_config(PUBLISHED[n], n)
                                  for n in ("qwen3-0.6b", "gemma-2-2b", "phi-3-mini-4k", "olmo-2-1b"))
    assert qwen3.q_dim == 2048 != qwen3.hidden and (qwen3.q_norm, qwen3.k_norm) == (128, 128) and qwen3.tied
    assert gemma2.tied and gemma2.layer_norms == 4 and gemma2.final_logit_softcap == 30.0
    assert gemma2.attention == "eager" and (gemma2.sliding_window, gemma2.window_layers) == (4096, 13)
    assert [(s.name, s.m, s.n) for s in phi3.linear_shapes()] == [
        ("self_attn.qkv_proj", 9216, 3072), ("self_attn.o_proj", 3072, 3072), ("mlp.gate_up_proj", 16384, 3072),
        ("mlp.down_proj", 3072, 8192)]
    assert (olmo2.q_norm, olmo2.k_norm) == (2048, 2048)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("llama", "gemma", "olmo2", "granite")])
def test_sliding_window_layers_follow_transformers_layer_types(family):
    from transformers import AutoConfig

    raw = {**_small(family, "as-is"), "num_hidden_layers": 12, "use_sliding_window": True, "sliding_window": 32,
           "max_window_layers": 5}
    kwargs = {k: v for k, v in raw.items() if k != "model_type"}
    types = getattr(AutoConfig.for_model(family, **kwargs), "layer_types", None)
    expected = 12 if types is None else sum(t == "sliding_attention" for t in types)  # mistral: every layer
    assert model_from_config(raw, family).window_layers == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_the_trace_runs_the_real_transformers_class(family, tmp_path):
    from subprof.config import TrainConfig
    from subprof.measure.case import Case
    from subprof.measure.model import build_model
    from subprof.measure.worker import measure

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**_small(family, "head_dim"), "num_hidden_layers": 2}))
    cfg = load_model(str(path))
    assert type(build_model(cfg, device="meta")).__name__ == FAMILIES[family].architecture
    row = measure(Case(config=TrainConfig(model=cfg, method="galore", rank=8, batch=1, seq=16), steps=1))
    assert row["status"] == "ok", row.get("error")
    assert row["optimizer_state_bytes"] > 0 and row["peak_allocated_bytes"] > row["param_bytes"] >= 2 * cfg.params


@pytest.mark.parametrize("model_type, why", [
    ("mixtral", "mixture-of-experts"), ("gpt_neox", "non-gated MLP"), ("gemma3", "text_config"),
    ("mamba", "LLaMA-shaped decoders only"),
])
def test_other_families_keep_a_precise_one_line_refusal(model_type, why):
    with pytest.raises(SubprofError, match=why) as err:
        model_from_config({"model_type": model_type, **SMALL}, model_type)
    assert "\n" not in str(err.value) and "qwen3" in str(err.value)


def test_bench_traces_a_new_family_from_the_command_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**_small("qwen3", "head_dim"), "num_hidden_layers": 2}))
    out = tmp_path / "bench.jsonl"
    done = subprocess.run([sys.executable, "-m", "subprof", "bench", "--model", str(path), "--methods", "adamw,galore",
                           "--ranks", "8", "--batch", "1", "--seq", "16", "--steps", "1", "--backend", "trace",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["status"]) for r in rows] == [("adamw", "ok"), ("galore", "ok")]
