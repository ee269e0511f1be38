"""The blocking face cannot drift from the async one.

Every public method and property of `Store`, `Snapshot` and `Transaction` has a
blocking twin on `SyncStore`, `SyncSnapshot` and `SyncTransaction` with the same
parameters (names, kinds, defaults, annotations); only what they return differs
(awaitables become values, async iterators become iterators, the async classes
their blocking twins). `open_sync` takes exactly the arguments of `open`.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import kvstore

FACES = [
    (kvstore.Store, kvstore.SyncStore),
    (kvstore.Snapshot, kvstore.SyncSnapshot),
    (kvstore.Transaction, kvstore.SyncTransaction),
]
# Parameters whose types differ between the faces by design.
DIFFERENT_BY_DESIGN = {
    ("transact", "fn"),  # async fn for the async face, either kind for the blocking one
    ("bulk_load", "items"),  # the blocking face takes no async iterable
}


def _public(cls: type) -> dict[str, Any]:
    return {name: member for name, member in vars(cls).items() if not name.startswith("_")}


def _parameters(function: Any) -> list[tuple[str, Any, Any, Any]]:
    signature = inspect.signature(function)
    return [(p.name, p.kind, p.default, p.annotation) for p in signature.parameters.values()]


@pytest.mark.parametrize(("async_face", "sync_face"), FACES, ids=lambda c: c.__name__)
def test_every_public_member_has_a_blocking_twin(async_face: type, sync_face: type) -> None:
    missing = sorted(set(_public(async_face)) - set(_public(sync_face)))
    assert missing == [], f"{sync_face.__name__} lacks {missing}"


@pytest.mark.parametrize(("async_face", "sync_face"), FACES, ids=lambda c: c.__name__)
def test_twins_take_the_same_parameters(async_face: type, sync_face: type) -> None:
    drifted = []
    for name, member in _public(async_face).items():
        twin = _public(sync_face).get(name)
        if not callable(member) or twin is None:
            continue
        mine = [p for p in _parameters(member) if (name, p[0]) not in DIFFERENT_BY_DESIGN]
        theirs = [p for p in _parameters(twin) if (name, p[0]) not in DIFFERENT_BY_DESIGN]
        if mine != theirs:
            drifted.append(f"{name}: {mine} != {theirs}")
    assert drifted == []


def test_properties_stay_properties() -> None:
    for async_face, sync_face in FACES:
        for name, member in _public(async_face).items():
            if isinstance(member, property):
                assert isinstance(_public(sync_face)[name], property), f"{sync_face.__name__}.{name}"


def test_open_sync_takes_the_arguments_of_open() -> None:
    assert _parameters(kvstore.open_sync) == _parameters(kvstore.open)


def test_the_check_sees_a_drift() -> None:
    class Async:
        async def get(self, key: bytes, default: Any = None) -> Any: ...

    class Drifted:
        def get(self, key: bytes, **kwargs: Any) -> Any: ...

    assert _parameters(Async.get) != _parameters(Drifted.get)


def test_all_is_sorted() -> None:
    assert list(kvstore.__all__) == sorted(kvstore.__all__)
