"""The read-modify-CAS loop shared by compaction, tags and GC marks (`kvstore._cas`)."""

from __future__ import annotations

import pytest

import kvstore
from kvstore._cas import read_modify_cas
from kvstore._objectstore import PreconditionFailed


async def test_a_lost_race_reloads_fresh_state_and_tries_again() -> None:
    loads: list[bool] = []
    writes: list[int] = []

    async def load(fresh: bool) -> int:
        loads.append(fresh)
        return len(loads)

    async def write(state: int) -> str:
        writes.append(state)
        if state < 3:
            raise PreconditionFailed("moved")
        return f"written on state {state}"

    assert await read_modify_cas("an update", load, write) == "written on state 3"
    assert loads == [False, True, True]  # only the first attempt may use what is in hand
    assert writes == [1, 2, 3]


async def test_it_gives_up_with_a_named_error_saying_what_lost() -> None:
    async def load(fresh: bool) -> None:
        return None

    async def write(state: None) -> None:
        raise PreconditionFailed("moved")

    with pytest.raises(kvstore.ContentionError, match="tagging 'v1' lost 4 compare-and-swap races"):
        await read_modify_cas("tagging 'v1'", load, write, attempts=4)
