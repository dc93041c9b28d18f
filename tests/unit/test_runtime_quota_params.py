"""The disk quota parameters: OpenVZ's units (1 KiB blocks, K/M/G/T), bounds, errors."""

from __future__ import annotations

import pytest

from vzpkg.runtime import quota
from vzpkg.runtime.params import ParamError, normalize, param_by_key


@pytest.mark.parametrize(("key", "text", "stored"), [
    ("DISKSPACE", "10G:11G", "10485760:11534336"),
    ("DISKSPACE", "1048576", "1048576:1048576"),          # bare numbers: 1 KiB blocks
    ("DISKSPACE", "1.5G", "1572864:1572864"),
    ("DISKSPACE", "16M:unlimited", "16384:unlimited"),
    ("DISKINODES", "200000:220000", "200000:220000"),
    ("QUOTATIME", "600", "600"),
])
def test_values_in_openvz_units(key: str, text: str, stored: str) -> None:
    assert normalize(param_by_key(key), text) == stored


@pytest.mark.parametrize(("key", "text", "needle"), [
    ("DISKSPACE", "-5", "not a size"),
    ("DISKSPACE", "99999999T", "out of range|too large"),
    ("DISKSPACE", "1M", "out of range"),                  # no ext4 journal fits
    ("DISKSPACE", "2G:1G", "barrier must not be above"),
    ("DISKSPACE", "1G:2G:3G", "barrier:limit"),
    ("DISKSPACE", "ten", "not a size"),
    ("DISKINODES", "5", "out of range"),
    ("DISKINODES", "99999999999", "out of range"),        # ext4 counts inodes in 32 bits
    ("DISKINODES", "-1", "not a number"),
    ("QUOTATIME", "-1", "not a whole number"),
])
def test_bad_values_name_what_was_expected(key: str, text: str, needle: str) -> None:
    with pytest.raises(ParamError, match=needle):
        normalize(param_by_key(key), text)


def test_limits_from_a_config() -> None:
    conf = {"DISKSPACE": "1048576:2097152", "DISKINODES": "1000:2000", "QUOTATIME": "60"}
    lim = quota.of_config(conf.get)
    assert (lim.space_soft, lim.space_hard, lim.inodes_hard, lim.quotatime) == (
        1048576, 2097152, 2000, 60)
    assert lim.image_bytes() == 2097152 * 1024 and lim.limited
    empty: dict[str, str] = {}
    assert not quota.of_config(empty.get).limited
