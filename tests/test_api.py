"""The public surface: exactly the names in __all__, typed, documented."""

from __future__ import annotations

import inspect
from pathlib import Path

from targets import engine_of

import kvstore


def test_all_is_exactly_the_public_names() -> None:
    public = {n for n in dir(kvstore) if not n.startswith("_")} - {"testing", "dask", "zarr"}  # submodules
    assert set(kvstore.__all__) == public


def test_every_public_name_has_a_docstring() -> None:
    for name in kvstore.__all__:
        obj = getattr(kvstore, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member):
                    assert inspect.getdoc(member), f"{name}.{attr}"


def test_exceptions_form_one_tree() -> None:
    errors = [getattr(kvstore, n) for n in kvstore.__all__ if n.endswith("Error")]
    assert all(issubclass(e, kvstore.KvStoreError) for e in errors)
    assert issubclass(kvstore.TransactionTooOldError, kvstore.ConflictError)
    assert issubclass(kvstore.InvalidKeyError, (ValueError, TypeError))


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("kvstore").joinpath("py.typed").is_file()


def test_repr_never_shows_secrets() -> None:
    options = kvstore.S3Options(
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="very-secret",
        aws_session_token="token-secret",
        sse_customer_key=b"k" * 32,
    )
    text = repr(options)
    assert "very-secret" not in text and "token-secret" not in text and "kkkk" not in text
    assert "<redacted>" in text


async def test_transactions_and_snapshots_are_readers(tmp_path: Path) -> None:
    async with kvstore.open(f"file://{tmp_path / 'store'}") as db:
        await db.put(b"k", b"v")
        snapshot = await db.snapshot()
        async with db.transaction() as tx:
            readers: list[kvstore.Reader] = [tx, snapshot]
            for reader in readers:
                assert isinstance(reader, kvstore.Reader)
                assert await reader.get(b"k") == b"v"
                assert [k async for k, _ in reader.scan()] == [b"k"]
        assert not isinstance(engine_of(db).objects, kvstore.Reader)  # something else is not one
