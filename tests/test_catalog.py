import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from subprof import catalog
from subprof.catalog import load_model, model_names
from subprof.errors import SubprofError

PAPER_PARAMS = {"60m": 58.1e6, "130m": 134.1e6, "350m": 368.0e6, "1b": 1339e6, "3b": 2686e6, "7b": 6738e6}


@pytest.mark.parametrize("name, expected", PAPER_PARAMS.items())
def test_param_counts_match_the_paper_table(name, expected):
    assert abs(load_model(name).params - expected) / expected < 0.0005


HF = Path(__file__).resolve().parent / "data" / "hf"  # real Hugging Face configs (values as published)


def _transformers_count(raw: dict) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "torch_dtype")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(raw.get("model_type", "llama"), **kwargs))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny", "20m", "60m", "350m", "1b", "7b", "13b"])
def test_param_counts_equal_transformers_on_meta(name):
    cfg = load_model(name)
    assert cfg.params == _transformers_count(cfg.raw)


@pytest.mark.parametrize("extra", [
    {"num_key_value_heads": 2},                      # grouped-query attention
    {"tie_word_embeddings": True},                   # tied embeddings
    {"vocab_size": 50304},                           # other vocab
    {"attention_bias": True, "mlp_bias": True},      # biases
    {"head_dim": 64, "num_attention_heads": 8, "num_key_value_heads": 4},  # explicit head_dim ≠ hidden/heads
])
def test_user_config_counts_equal_transformers(tmp_path, extra):
    raw = dict(load_model("20m").raw, **extra)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    cfg = load_model(str(path))
    assert cfg.params == _transformers_count(raw)


def test_model_names_lists_catalogue():
    names = model_names()
    for required in ("tiny", "20m", "60m", "130m", "350m", "1b", "3b", "7b", "13b"):
        assert required in names


def test_distinct_shapes_of_1b():
    assert load_model("1b").distinct_shapes() == [(2048, 2048), (5461, 2048), (2048, 5461)]


def test_shape_counts_sum_the_weights_of_each_distinct_shape():
    m = load_model("1b")
    assert m.shape_counts() == ((2048, 2048, 4 * m.layers), (5461, 2048, 2 * m.layers), (2048, 5461, m.layers))
    assert sum(a * b * k for a, b, k in m.shape_counts()) == m.projected_params


def test_a_changed_model_is_never_answered_from_the_caches_of_the_first():
    m = load_model("1b")
    wider = replace(m, vocab=m.vocab + 1)
    assert wider != m and hash(wider) != hash(m)
    assert wider.params == m.params + 2 * m.hidden  # embedding and lm_head each one row more
    assert replace(m, intermediate=5504).shape_counts()[1] == (5504, 2048, 2 * m.layers)


def test_a_model_pickled_into_another_process_hashes_as_one_built_there():
    """The hash is kept on the config; a spawned rank (another string-hash seed) must compute its own."""
    code = ("import dataclasses, pickle, sys; from subprof.catalog import ModelConfig; "
            "m = pickle.loads(sys.stdin.buffer.read()); "
            "same = ModelConfig(**{f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.init}); "
            "print(m == same, hash(m) == hash(same))")
    root = Path(catalog.__file__).resolve().parents[1]  # the child imports this checkout's subprof
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(load_model("7b")), capture_output=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=root, check=True)
    assert out.stdout.split() == [b"True", b"True"]


def test_unknown_model_suggests_nearest():
    with pytest.raises(SubprofError, match="did you mean.*7b"):
        load_model("7bb")


def test_missing_config_path(tmp_path):
    with pytest.raises(SubprofError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "config.json"))


@pytest.mark.parametrize("name", ["tinyllama", "llama-3.2-1b", "llama-3-8b", "mistral-7b", "qwen2-0.5b"])
def test_hugging_face_llama_shaped_configs_count_as_transformers_does(name):
    cfg = load_model(str(HF / f"{name}.json"))
    assert cfg.params == _transformers_count(json.loads((HF / f"{name}.json").read_text()))


def test_qwen2_has_qkv_biases_and_mistral_its_window():
    qwen, mistral = load_model(str(HF / "qwen2-0.5b.json")), load_model(str(HF / "mistral-7b.json"))
    assert qwen.qkv_bias and qwen.tied and qwen.bias_params == (896 + 2 * 128) * 24
    assert mistral.sliding_window == 4096
    assert mistral.forward_flops_per_token(8192) < mistral.forward_flops_per_token(4096) * 1.5  # window caps it


def test_other_architectures_are_refused_saying_why(tmp_path):
    with pytest.raises(SubprofError, match=r"model_type 'gpt2'.*LLaMA-shaped decoders only.*llama, mistral, qwen2"):
        load_model(str(HF / "gpt2.json"))


def test_incomplete_llama_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(SubprofError, match="lacks"):
        load_model(str(path))


def test_config_folder_is_accepted(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(load_model("tiny").raw))
    assert load_model(str(tmp_path)).params == load_model("tiny").params
