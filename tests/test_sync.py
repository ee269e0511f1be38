"""The blocking API: the same store, driven from ordinary threads and processes."""

from __future__ import annotations

import threading

import pytest
from targets import Target

import kvstore


def test_sync_store_is_a_mutable_mapping(target: Target) -> None:
    with target.open_sync() as db:
        db[b"a"] = b"1"
        db["b"] = b"2"
        assert db[b"a"] == b"1"
        assert b"b" in db and b"zz" not in db and 3 not in db
        assert len(db) == 2
        assert list(db) == [b"a", b"b"]
        assert dict(db.items()) == {b"a": b"1", b"b": b"2"}
        del db[b"a"]
        with pytest.raises(KeyError):
            db[b"a"]
        with pytest.raises(KeyError):
            del db[b"a"]
        db.update({b"c": b"3"})
        assert db.get(b"c") == b"3" and db.get(b"x", b"d") == b"d"


def test_sync_transactions_and_scan(target: Target) -> None:
    with target.open_sync(values="msgpack") as db:
        with db.transaction() as tx:
            for i in range(600):  # more than one scan batch
                tx.put(f"n/{i:04d}", i)
        assert [v for _, v in db.scan(prefix="n/", limit=3)] == [0, 1, 2]
        assert sum(v for _, v in db.scan(prefix="n/")) == sum(range(600))
        assert [k for k, _ in db.scan(prefix="n/", reverse=True, limit=1)] == [b"n/0599"]
        with pytest.raises(ValueError):
            with db.transaction() as tx:
                tx.put("n/0000", -1)
                raise ValueError("discard me")
        assert db.get("n/0000") == 0
        snap = db.snapshot()
        db.put("n/0000", 100)
        assert snap.get("n/0000") == 0
        assert db.get("n/0000") == 100
        assert snap.version < db.version


def test_sync_transact_from_many_threads(target: Target) -> None:
    def increment(tx: kvstore.SyncTransaction) -> None:
        tx.put("count", tx.get("count", 0) + 1)

    with target.open_sync(values="msgpack") as db:
        threads = [threading.Thread(target=lambda: [db.transact(increment) for _ in range(5)]) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert db["count"] == 30


def test_sync_store_errors_are_kvstore_errors(target: Target) -> None:
    with target.open_sync() as db:
        with pytest.raises(kvstore.InvalidValueError):
            db[b"a"] = "not bytes"
        with pytest.raises(kvstore.InvalidKeyError):
            db.get(7)  # type: ignore[arg-type]
    with pytest.raises(kvstore.ClosedError):
        db.get(b"a")
    db.close()  # idempotent


def test_open_sync_missing_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(kvstore.StoreNotFoundError):
        kvstore.open_sync(tmp_path / "none", create=False)
