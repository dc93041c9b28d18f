"""VE id ranges: parsed with clear errors, allocated without overlap."""

from __future__ import annotations

import pytest

from vzpkg.core.errors import ConfigError, VeError
from vzpkg.runtime.idmap import DEFAULT_POOL, SIZE, IdRange, allocate

POOL = IdRange.parse(DEFAULT_POOL, where="test")


def test_parse_and_format() -> None:
    r = IdRange.parse("104857600:65536", where="x")
    assert (r.base, r.count, r.end) == (104857600, 65536, 104923136)
    assert str(r) == "104857600:65536" and r.map_line() == "0 104857600 65536\n"
    assert IdRange.parse("200000", where="x").count == SIZE


@pytest.mark.parametrize("text", ["", "abc", "1:x", "0:65536", "-5:10", "4294967295:2"])
def test_bad_ranges_name_where_and_how(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        IdRange.parse(text, where="/vz/etc/vz/conf/101.conf: VE_IDMAP")
    assert exc.value.message.startswith("/vz/etc/vz/conf/101.conf: VE_IDMAP: ")
    assert exc.value.hint


def test_allocation_is_aligned_disjoint_and_lowest_first() -> None:
    first = allocate([], POOL)
    assert first.base % SIZE == 0 and first.base >= POOL.base and first.count == SIZE
    used = [first]
    for _ in range(20):
        r = allocate(used, POOL)
        assert not any(r.overlaps(u) for u in used)
        used.append(r)
    # a hole left by a destroyed VE is used again
    hole = used.pop(5)
    assert allocate(used, POOL) == hole
    # a foreign, unaligned range is stepped around
    odd = IdRange(first.end + 100, 10)
    assert not allocate([first, odd], POOL).overlaps(odd)


def test_a_full_pool_says_what_to_do() -> None:
    small = IdRange(SIZE, 2 * SIZE)
    taken = [allocate([], small)]
    taken.append(allocate(taken, small))
    with pytest.raises(VeError) as exc:
        allocate(taken, small)
    assert "VE_IDMAP_POOL" in (exc.value.hint or "")
