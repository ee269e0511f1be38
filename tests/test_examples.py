"""Every example runs, on the local filesystem with no setup and on S3 with one option."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart_on_local_filesystem(tmp_path: Path) -> None:
    out = _run("quickstart.py", cwd=tmp_path)
    assert "balances after transfer: {'accounts/ada': 70, 'accounts/alan': 80}" in out
    assert "still sees ada = 70" in out and "latest sees ada = 0" in out
    assert (tmp_path / "quickstart-store" / "manifest").is_file()


def test_quickstart_on_s3(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    out = _run("quickstart.py", f"s3://{bucket}/quickstart", env={"KVSTORE_ENDPOINT_URL": endpoint_url})
    assert f"opened s3://{bucket}/quickstart/" in out
    assert "balances after transfer: {'accounts/ada': 70, 'accounts/alan': 80}" in out


# --------------------------------------------------------------------------- embedded_service.py


def _post(url: str) -> tuple[int, dict[str, object]]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_embedded_service_workers_share_one_store(tmp_path: Path) -> None:
    """Three worker processes on free ports, one local store: concurrent requests, exact counts."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    store = str(tmp_path / "service-store")
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "embedded_service.py"), store, "--serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        bases = []
        for proc in workers:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # printed once the worker serves; "" if it died
            assert line.startswith("listening on http://127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
            bases.append(line.split()[2])
        assert len(set(bases)) == 3

        with ThreadPoolExecutor(max_workers=24) as pool:
            hits = list(pool.map(lambda i: _post(f"{bases[i % 3]}/hit/page"), range(60)))
            limited = list(pool.map(lambda i: _post(f"{bases[i % 3]}/limit/client-1"), range(24)))
        # Every increment saw a distinct count: no lost update across processes.
        assert sorted(body["count"] for status, body in hits if status == 200) == list(range(1, 61))
        for base in bases:
            with urllib.request.urlopen(f"{base}/count/page", timeout=60) as response:
                assert json.loads(response.read()) == {"name": "page", "count": 60}
        # The limiter let exactly LIMIT (5) requests through, whichever worker served them.
        assert sorted(status for status, _ in limited) == [200] * 5 + [429] * 19
        assert sorted(body["remaining"] for status, body in limited if status == 200) == [0, 1, 2, 3, 4]
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=30)
    assert all(proc.returncode == 0 for proc in workers), [p.returncode for p in workers]


def test_embedded_service_demo_on_s3(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    out = _run("embedded_service.py", f"s3://{bucket}/service", env={"KVSTORE_ENDPOINT_URL": endpoint_url})
    assert "went from 0 to 40" in out and "every hit saw a distinct count: True" in out
    assert "rate limiter: 5 of 15 requests allowed, 10 refused" in out


# --------------------------------------------------------------------------- ml_catalog.py


def _check_catalog(out: str) -> None:
    import json

    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in out.splitlines() if ":" in line}
    recorded = json.loads(lines["recorded inputs"])
    latest = json.loads(lines["latest inputs"])
    reproduced = json.loads(next(v for k, v in lines.items() if k.startswith("reproduced inputs")))
    assert reproduced == recorded and lines["reproduced == recorded"].strip() == "True"
    assert [(i["dataset"].split("-")[0], i["version"], len(i["shards"])) for i in recorded] == [
        ("captions", 1, 1),
        ("images", 1, 3),
    ]
    # Later changes are visible at the latest version only.
    assert [(i["dataset"].split("-")[0], i["version"], len(i["shards"])) for i in latest] == [("images", 2, 2)]


def test_ml_catalog_on_local_filesystem(tmp_path: Path) -> None:
    out = _run("ml_catalog.py", cwd=tmp_path)
    _check_catalog(out)
    assert (tmp_path / "ml-catalog-store" / "manifest").is_file()
    _check_catalog(_run("ml_catalog.py", cwd=tmp_path))  # runs again on the same store


def test_ml_catalog_on_s3(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    _check_catalog(_run("ml_catalog.py", f"s3://{bucket}/catalog", env={"KVSTORE_ENDPOINT_URL": endpoint_url}))


# --------------------------------------------------------------------------- asyncio_app.py


def _check_asyncio_app(out: str) -> None:
    assert "80 customers, 50 orders placed, 30 sold out" in out
    assert "stock left: {'gadget': 0, 'widget': 0}" in out
    assert "stock + orders == initial stock: True" in out
    assert "watcher saw 50 orders, 50 distinct" in out


def test_asyncio_app_on_local_filesystem(tmp_path: Path) -> None:
    _check_asyncio_app(_run("asyncio_app.py", cwd=tmp_path))


def test_asyncio_app_on_s3(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    _check_asyncio_app(_run("asyncio_app.py", f"s3://{bucket}/app", env={"KVSTORE_ENDPOINT_URL": endpoint_url}))


# --------------------------------------------------------------------------- docs/api.md


# --------------------------------------------------------------------------- ml_catalog_dask.py


def _check_dask_catalog(out: str, records: int) -> None:
    assert f"wrote {records:,} file records with Dask" in out
    assert "committed as version 1, one commit: [{'release': 'catalog-" in out
    assert "at 'catalog-" in out and "files/01/00000001.jpg is a dog, files/02/00000002.jpg exists: True" in out
    assert "latest:  files/01/00000001.jpg is a wolf, files/02/00000002.jpg exists: False" in out
    per_shard = records // 64
    assert f"files in shard files/07/: {per_shard:,} at the release, {per_shard + per_shard // 10:,} now" in out


def test_ml_catalog_dask_on_local_filesystem(tmp_path: Path) -> None:
    # 1M records by default (about 20-30 s here); the test builds a smaller catalog.
    _check_dask_catalog(_run("ml_catalog_dask.py", "--records", "6400", cwd=tmp_path), 6400)
    assert (tmp_path / "ml-catalog-dask-store" / "manifest").is_file()


def test_ml_catalog_dask_on_s3(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    out = _run(
        "ml_catalog_dask.py",
        f"s3://{bucket}/catalog-dask",
        env={"KVSTORE_EXAMPLE_RECORDS": "6400", "KVSTORE_ENDPOINT_URL": endpoint_url},
    )
    _check_dask_catalog(out, 6400)


def test_the_process_pool_example_of_docs_distributed_runs(tmp_path: Path) -> None:
    """docs/distributed.md, "concurrent.futures": the example runs as written."""
    text = (ROOT / "docs" / "distributed.md").read_text().split("\n## concurrent.futures\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    script = tmp_path / "pool_example.py"  # a file: spawned workers import the main module
    script.write_text(block)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "committed 8 parts at version 1: 80000 entries\n"


def test_api_reference_is_up_to_date() -> None:
    """docs/api.md is generated from the docstrings: regenerate it with python docs/gen_api.py."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- zarr_arrays.py

ZARR_AT_TAG = "at tag v1: temperature[0] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], labels = [10, 20, 30, 40]"
ZARR_LATEST = "latest: temperature[0] = [-1.0, -1.0, -1.0, 3.0, 4.0, 5.0], labels = [10, 20, 30, 40]"


def test_zarr_arrays_on_local_filesystem_twice(tmp_path: Path) -> None:
    """Two arrays in one session, a tag, a partial overwrite; both read at the tag and at
    latest. A second run (overwriting the arrays in a new session) prints the same."""
    for run in (1, 2):
        out = _run("zarr_arrays.py", cwd=tmp_path)
        assert ZARR_AT_TAG in out and ZARR_LATEST in out, out
        assert f"session committed both arrays at version {2 * run - 1}" in out
    assert (tmp_path / "zarr-store" / "manifest").is_file()


def test_zarr_arrays_on_s3(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    out = _run("zarr_arrays.py", f"s3://{bucket}/zarr", env={"KVSTORE_ENDPOINT_URL": endpoint_url})
    assert ZARR_AT_TAG in out and ZARR_LATEST in out, out


# --------------------------------------------------------------------------- zarr_dask.py


def test_zarr_dask_on_local_filesystem(tmp_path: Path) -> None:
    """dask.array.to_zarr through a session's store on two worker processes; one commit."""
    out = _run("zarr_dask.py", cwd=tmp_path)
    assert "before the commit, others see version 0: chunks staged, none visible" in out, out
    assert "one commit published the array at version 1" in out
    assert "16 chunks, sum 8386560 (expected 8386560)" in out
