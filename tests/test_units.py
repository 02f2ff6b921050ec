import pytest

from subprof.errors import SubprofError
from subprof.units import fmt_gib, parse_count, parse_size


@pytest.mark.parametrize("text, expected", [
    ("24GB", 24 * 10**9), ("24 GB", 24 * 10**9), ("24gb", 24 * 10**9), ("80G", 80 * 10**9),
    ("24GiB", 24 * 2**30), ("24000MiB", 24000 * 2**20), ("1.5TB", 15 * 10**11), ("512MB", 512 * 10**6),
    ("100", 100),
])
def test_parse_size_reads_decimal_and_binary_units(text, expected):
    assert parse_size(text).bytes == expected


def test_parse_size_names_the_unit_it_used():
    assert parse_size("24GB").unit == "GB"
    assert parse_size("24GiB").unit == "GiB"


@pytest.mark.parametrize("text", ["24XB", "-5GB", "0GB", "GB", "", "twelve", "24 G B"])
def test_parse_size_rejects_bad_input(text):
    with pytest.raises(SubprofError):
        parse_size(text)


def test_parse_count():
    assert parse_count("10B") == 10**10
    assert parse_count("500M") == 5 * 10**8
    with pytest.raises(SubprofError):
        parse_count("ten")


def test_fmt_gib_names_unit():
    assert fmt_gib(24 * 10**9) == "22.35 GiB"
