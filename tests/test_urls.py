"""A mistyped store URL is refused with the corrected form, and creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvstore


@pytest.mark.parametrize(
    "url, corrected",
    [
        ("s3:/bucket/x", "s3://bucket/x"),
        ("s3:bucket/x", "s3://bucket/x"),
        ("S3:/bucket/x", "s3://bucket/x"),
        ("s3//bucket/x", "s3://bucket/x"),
        ("s3:", "s3://bucket/prefix"),
        ("memory:x", "memory://x"),
        ("file:/abs/store", "file:///abs/store"),
        ("file:rel", "plain path 'rel'"),
        ("file:rel/x", "file:///rel/x"),
        ("file://rel/x", "plain path 'rel/x'"),
        ("xx://b/x", "s3://bucket/prefix"),
    ],
)
async def test_mistyped_url_is_refused_with_the_correction(
    url: str, corrected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(kvstore.InvalidURLError, match="^.*" + corrected.replace("(", r"\(")):
        await kvstore.open(url)
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a directory "s3:"


def test_a_path_object_with_a_mistyped_scheme_is_refused_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(kvstore.InvalidURLError, match="s3://bucket/x"):
        kvstore.open(Path("s3:/bucket/x"))


def test_relative_file_url_names_the_absolute_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(kvstore.InvalidURLError, match=f"file://{tmp_path}/rel"):
        kvstore.open("file:rel")


@pytest.mark.parametrize("path", ["store", "./store", "data/a:b", "a:b", "s3data", "{abs}/store"])
async def test_plain_paths_still_open_local_stores(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = path.format(abs=tmp_path)
    async with kvstore.open(path) as db:
        await db.put(b"k", b"v")
        assert db.url == f"file://{(tmp_path / path).resolve()}"
    assert (tmp_path / path / "manifest").is_file()


async def test_scheme_case_is_ignored(tmp_path: Path) -> None:
    async with kvstore.open(f"FILE://{tmp_path}/store") as db:
        assert db.url == f"file://{tmp_path}/store"
    async with kvstore.open("Memory://case") as db:
        assert db.url == "memory://case"
