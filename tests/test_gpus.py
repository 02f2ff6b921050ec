"""The GPU catalogue (`profiles/gpus.toml`) and the lookups built on it: `find_gpu`, `parse_budget`.

These tests check the catalogue's shape and internal consistency (every figure positive and sourced, driver-reported
memory close to the datasheet label); they cannot check that a vendor figure is right — the sources say where each
figure comes from and which ones are unverified.
"""

from __future__ import annotations

import tomllib

import pytest

from subprof.catalog import GpuSpec, find_gpu, gpu_by_name, gpu_catalog, gpus_starting_with, parse_budget, profiles_dir
from subprof.errors import SubprofError
from subprof.units import parse_size

ADDED = ["rtx-4080", "rtx-4070-ti-super", "a40", "l40", "v100-16gb", "v100-32gb", "rtx-6000-ada", "h800", "h20"]  # issue 23
REQUIRED = ["rtx-3090", "rtx-4090", "rtx-5090", "rtx-a6000", "l4", "l40s", "a10g", "a100-40gb", "a100-80gb",
            "h100-pcie", "h100-sxm", "h200", "b200", "mi300x", *ADDED]
FIGURES = {"memory": "memory_label", "memory_bytes": "memory_bytes", "bandwidth": "bandwidth_gbs",
           "bf16_tflops": "bf16_tflops", "price": "price_per_hour", "intra_node": "intra_node_gbs",
           "inter_node": "inter_node_gbs", "host_link": "host_link_gbs"}


def _raw() -> dict:
    return tomllib.loads((profiles_dir() / "gpus.toml").read_text())["gpu"]


def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def test_catalogue_loads_as_gpu_specs():
    cat = gpu_catalog()
    assert cat and all(isinstance(g, GpuSpec) and g.key == key for key, g in cat.items())


@pytest.mark.parametrize("key", REQUIRED)
def test_required_gpu_present(key):
    assert key in gpu_catalog()


@pytest.mark.parametrize("key", REQUIRED)
def test_every_figure_positive(key):
    g = gpu_catalog()[key]
    assert g.memory_bytes > 0 and g.bandwidth_gbs > 0 and g.bf16_tflops > 0 and g.price_per_hour > 0
    assert parse_size(g.memory_label).bytes > 0
    assert g.vendor in {"nvidia", "amd"}


@pytest.mark.parametrize("key", REQUIRED)
def test_every_figure_has_a_source(key):
    sources = gpu_catalog()[key].sources
    assert set(sources) == set(FIGURES), f"{key}: sources must name exactly {sorted(FIGURES)}"
    for figure, text in sources.items():
        assert isinstance(text, str) and len(text.strip()) > 10, f"{key}: empty source for {figure}"


@pytest.mark.parametrize("key", REQUIRED)
def test_memory_bytes_is_an_explicit_integer(key):
    """The driver-reported total is written out, not derived from the label by the loader's fallback."""
    assert isinstance(_raw()[key]["memory_bytes"], int)


@pytest.mark.parametrize("key", REQUIRED)
def test_memory_bytes_close_to_label(key):
    """Drivers report a bit more than the label in GB and a bit less than (or equal to) it read as GiB."""
    g = gpu_catalog()[key]
    number = parse_size(g.memory_label).bytes / 1e9
    as_gb, as_gib = number * 1e9, number * 2**30
    assert 0.9 * as_gb <= g.memory_bytes <= 1.1 * as_gb or 0.9 * as_gib <= g.memory_bytes <= 1.1 * as_gib
    assert as_gb < g.memory_bytes <= as_gib


def test_prices_are_marked_indicative():
    for key, g in gpu_catalog().items():
        assert "indicative" in g.sources["price"].lower(), key


def test_names_and_aliases_are_unambiguous():
    seen: dict[str, str] = {}
    for g in gpu_catalog().values():
        for label in {_norm(g.key), _norm(g.name), *(_norm(a) for a in g.aliases)}:
            assert seen.setdefault(label, g.key) == g.key, f"{label!r} names both {seen[label]} and {g.key}"


def test_no_alias_reads_as_a_size_with_unit():
    """A catalogue name wins over a size in parse_budget, so no alias may look like `24GB`; bare model numbers
    (`4090`) are the one deliberate overlap — nobody means a 4090-byte budget."""
    for g in gpu_catalog().values():
        for label in (g.key, g.name, *g.aliases):
            try:
                parse_size(label)
            except SubprofError:
                continue
            assert label.isdigit(), f"alias {label!r} of {g.key} reads as a size"


@pytest.mark.parametrize("text, key", [("4090", "rtx-4090"), ("h100-sxm", "h100-sxm"), ("H100 SXM", "h100-sxm"),
                                       ("a100-80gb", "a100-80gb"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
                                       ("MI300X", "mi300x")])
def test_find_gpu_resolves(text, key):
    gpu = find_gpu(text)
    assert gpu is not None and gpu.key == key


def test_find_gpu_unknown_is_none():
    assert find_gpu("nosuchgpu") is None


def test_parse_budget_gpu_name_gives_the_card():
    budget = parse_budget("4090")
    assert budget.gpu is not None and budget.gpu.key == "rtx-4090"
    assert budget.bytes == gpu_catalog()["rtx-4090"].memory_bytes


def test_parse_budget_gb_is_decimal():
    budget = parse_budget("24GB")
    assert budget.bytes == 24 * 10**9 and budget.gpu is None


def test_parse_budget_gib_is_binary():
    assert parse_budget("24GiB").bytes == 24 * 2**30


@pytest.mark.parametrize("text", ["24XB", "-5GB", "nosuchgpu"])
def test_parse_budget_rejects(text):
    with pytest.raises(SubprofError):
        parse_budget(text)


@pytest.mark.parametrize("key", REQUIRED)
def test_every_gpu_has_its_links_with_sources(key):
    g, raw = gpu_catalog()[key], _raw()[key]
    assert g.intra_node_gbs > 0 and g.inter_node_gbs > 0 and g.intra_node_link and g.inter_node_link
    assert raw["sources"]["intra_node"] and raw["sources"]["inter_node"]
    assert g.inter_node_gbs < g.intra_node_gbs  # a node's NIC share is slower than its NVLink/PCIe


@pytest.mark.parametrize("key", ADDED)
def test_added_cards_cite_a_document_url_or_say_unverified(key):
    """Each datasheet figure of the cards issue 23 added names its document by URL, or says it is unverified."""
    sources = gpu_catalog()[key].sources
    for figure in ("memory", "bandwidth", "bf16_tflops"):
        text = sources[figure]
        assert "https://" in text or "(URL above)" in text or "unverified" in text, (key, figure)


@pytest.mark.parametrize("name, keys", [("a100", {"a100-40gb", "a100-80gb"}), ("h100", {"h100-pcie", "h100-sxm"}),
                                        ("v100", {"v100-16gb", "v100-32gb"})])
def test_a_name_several_cards_share_names_none_of_them(name, keys):
    assert find_gpu(name) is None
    assert {g.key for g in gpus_starting_with(name)} == keys
    with pytest.raises(SubprofError, match="names 2 catalogue GPUs"):
        gpu_by_name(name)
    with pytest.raises(SubprofError, match="names 2 catalogue GPUs"):
        parse_budget(name)
