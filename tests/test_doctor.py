"""`kvstore doctor`: every property kvstore relies on, checked on real endpoints.

The local filesystem and LocalStack have them all; moto's conditional
writes are check-then-act, and its answers are reported as they are; an
endpoint that drops If-None-Match / If-Match (a loopback proxy stripping
them in front of LocalStack) fails exactly the checks that depend on them.
Each run must leave nothing behind.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from servers import s3_client
from test_cli import invoke, kv, run

import kvstore
from kvstore._objectstore import LocalObjectStore, ObjectInfo, ObjectStore
from kvstore.testing.faults import FaultInjectingStore, FaultPlan, FaultRule
from kvstore.testing.netproxy import FaultProxy

ALL = [
    "if-none-match",
    "create-race",
    "if-match",
    "cas-race",
    "multipart-if-none-match",
    "copy-conditions",
    "conditional-get",
    "ranged-get",
    "delete-objects",
    "409-conflicts",
    "listing",
    "clock-skew",
]
# What an endpoint that drops If-None-Match and If-Match breaks: every check that sends one.
NEEDS_CONDITIONAL_HEADERS = [
    "if-none-match",
    "create-race",
    "if-match",
    "cas-race",
    "multipart-if-none-match",
    "copy-conditions",  # If-None-Match on the destination; CopySourceIfMatch is another header
    "conditional-get",
]


def _results(report: kvstore.DoctorReport) -> dict[str, str]:
    return {c.name: c.result for c in report.checks}


async def _objects_in(endpoint_url: str, bucket: str) -> list[str]:
    async with s3_client(endpoint_url) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
        uploads = await s3.list_multipart_uploads(Bucket=bucket)
    return [o["Key"] for o in listed.get("Contents", [])] + [u["Key"] for u in uploads.get("Uploads", [])]


async def test_every_property_holds_on_the_local_filesystem(tmp_path: Path) -> None:
    report = await kvstore.doctor(tmp_path / "store")
    assert [c.name for c in report.checks] == ALL
    assert _results(report) == {**dict.fromkeys(ALL, "pass"), "409-conflicts": "n/a"}
    assert "local filesystem" in report.checks[ALL.index("409-conflicts")].detail
    assert report.ok and report.failed == [] and report.leftovers == ()
    # Nothing left behind: not a scratch file, not a lock, not a work directory.
    assert list((tmp_path / "store").iterdir()) == []


async def test_every_property_holds_on_localstack(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    report = await kvstore.doctor(f"s3://{bucket}/some/prefix", endpoint_url=endpoint_url)
    print(json.dumps(report.to_dict(), indent=1))
    assert _results(report) == dict.fromkeys(ALL, "pass"), report.to_dict()
    assert report.ok and report.leftovers == ()
    assert await _objects_in(endpoint_url, bucket) == []


async def test_moto_is_reported_as_it_is(moto_bucket: tuple[str, str]) -> None:
    """moto ignores both conditions of CopyObject (seen every run, docs/operations.md). Its conditional
    writes are check-then-act, so its races may or may not show two winners in a run:
    whichever it is, the doctor must say it as it happened."""
    endpoint_url, bucket = moto_bucket
    report = await kvstore.doctor(f"s3://{bucket}", endpoint_url=endpoint_url)
    races = {"create-race", "cas-race"}
    steady = {name: result for name, result in _results(report).items() if name not in races}
    expected = {name: "pass" for name in ALL if name not in races} | {"copy-conditions": "fail"}
    assert steady == expected, report.to_dict()
    copy = next(c for c in report.checks if c.name == "copy-conditions")
    assert copy.detail == (
        "a copy with a wrong CopySourceIfMatch succeeded; "
        "a copy onto an existing object succeeded (If-None-Match ignored)"
    )
    for check in report.checks:
        if check.name in races:
            assert check.result in ("pass", "fail")
            if check.result == "fail":  # two or more winners: that is the only way moto loses a race
                assert re.fullmatch(r"round \d of 4: [2-8] of 8 concurrent .* succeeded", check.detail), check
            else:
                assert check.detail.startswith("4 rounds of 8 concurrent"), check
    assert not report.ok and await _objects_in(endpoint_url, bucket) == []


async def test_an_endpoint_that_drops_conditional_headers_fails_naming_them(s3_bucket: tuple[str, str]) -> None:
    endpoint_url, bucket = s3_bucket
    with FaultProxy(endpoint_url, strip_headers={"If-None-Match", "If-Match"}) as proxy:
        report = await kvstore.doctor(f"s3://{bucket}/p", endpoint_url=proxy.endpoint_url)
    print(json.dumps(report.to_dict(), indent=1))
    assert not report.ok
    assert report.failed == NEEDS_CONDITIONAL_HEADERS
    assert _results(report) == {**dict.fromkeys(ALL, "pass"), **dict.fromkeys(NEEDS_CONDITIONAL_HEADERS, "fail")}
    assert await _objects_in(endpoint_url, bucket) == []  # cleaned up after failures too


async def test_409s_are_counted_and_retried(s3_bucket: tuple[str, str]) -> None:
    """LocalStack never sends a 409 (a racing loser of AWS S3 may): injected under the retry
    layer, a third of the conditional writes answer 409 first, and every race still has one
    winner."""
    endpoint_url, bucket = s3_bucket
    conflicts = FaultRule(conflict=0.3)
    made: list[FaultInjectingStore] = []

    def wrap(inner: ObjectStore) -> ObjectStore:
        made.append(FaultInjectingStore(inner, FaultPlan(seed=5, rules={"put_if_match": conflicts})))
        return made[0]

    report = await kvstore.doctor(f"s3://{bucket}", endpoint_url=endpoint_url, wrap_object_store=wrap)
    injected = made[0].injected["put_if_match:conflict"]
    assert injected > 0
    assert _results(report) == dict.fromkeys(ALL, "pass"), report.to_dict()
    check = next(c for c in report.checks if c.name == "409-conflicts")
    assert check.detail.startswith(f"{injected} 409s in ")


class _SkewedClock(LocalObjectStore):
    """A local store whose LastModified runs `skew` seconds ahead of this machine's clock."""

    def __init__(self, root: Path, skew: float) -> None:
        super().__init__(root)
        self.skew = skew

    async def head(self, name: str) -> ObjectInfo:
        info = await super().head(name)
        return ObjectInfo(info.name, info.size, info.etag, info.last_modified + self.skew)


@pytest.mark.parametrize(("skew", "result"), [(7200.0, "fail"), (-1000.0, "fail"), (600.0, "pass")])
async def test_clock_skew_is_judged_against_the_grace_period(tmp_path: Path, skew: float, result: str) -> None:
    report = await kvstore.doctor(tmp_path, wrap_object_store=lambda _: _SkewedClock(tmp_path, skew))
    check = next(c for c in report.checks if c.name == "clock-skew")
    assert check.result == result, check
    measured = re.match(r"server clock ([+-][0-9.]+) s from this machine's", check.detail)
    assert measured is not None and abs(float(measured.group(1)) - skew) < 5, check
    if result == "fail":
        assert report.failed == ["clock-skew"]
        assert "under 1800 s (half of segment_grace_period 3600 s)" in check.detail
    # A longer grace period tolerates more.
    relaxed = await kvstore.doctor(
        tmp_path, grace_period=10 * abs(skew), wrap_object_store=lambda _: _SkewedClock(tmp_path, skew)
    )
    assert relaxed.ok


def test_cli_table_json_and_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: tuple[str, str]
) -> None:
    endpoint_url, bucket = s3_bucket
    ok = invoke(monkeypatch, "doctor", str(tmp_path / "d"))
    assert ok.rc == 0, ok.describe()
    lines = ok.text.splitlines()
    assert lines[0] == f"endpoint: file://{tmp_path / 'd'}"
    assert lines[1].split() == ["property", "result", "seen", "what", "kvstore", "does"]
    assert [line.split()[:2] for line in lines[2:-1]] == [
        [name, "n/a" if name == "409-conflicts" else "pass"] for name in ALL
    ]
    assert lines[-1] == "ok: every property kvstore relies on holds (1 n/a)"
    with FaultProxy(endpoint_url, strip_headers={"If-None-Match", "If-Match"}) as proxy:
        # As a separate process, as an operator runs it before a deployment.
        bad, bad_json = run(
            kv("doctor", f"s3://{bucket}/a", "--endpoint-url", proxy.endpoint_url),
            kv("doctor", f"s3://{bucket}/b", "--endpoint-url", proxy.endpoint_url, "--json"),
        )
    assert bad.rc == 1, bad.describe()
    assert bad.text.splitlines()[-1] == (
        f"FAILED: {', '.join(NEEDS_CONDITIONAL_HEADERS)}: kvstore relies on each "
        "(docs/operations.md, 'Checking an endpoint')"
    )
    assert "if-none-match            FAIL    a second create of an existing object succeeded" in bad.text
    assert bad_json.rc == 1, bad_json.describe()
    doc = json.loads(bad_json.out)
    assert doc["ok"] is False and doc["failed"] == NEEDS_CONDITIONAL_HEADERS
    assert [c["name"] for c in doc["checks"]] == ALL
    assert all(set(c) == {"name", "result", "detail", "kvstore_does"} for c in doc["checks"])
    # Usage errors, as in every command: a bad URL, a memory store (exit 2); a missing bucket (exit 3).
    invoke(monkeypatch, "doctor", "s3://Bad_Bucket").one_line_error(2, "not a valid bucket name")
    invoke(monkeypatch, "doctor", "memory://x").one_line_error(2, "memory store")
    missing = invoke(monkeypatch, "doctor", "s3://no-such-bucket-kvt", "--endpoint-url", endpoint_url)
    missing.one_line_error(3, "does not exist")


def test_doctor_sync_mirrors_doctor(tmp_path: Path) -> None:
    import inspect

    assert inspect.signature(kvstore.doctor_sync).parameters == inspect.signature(kvstore.doctor).parameters
    report = kvstore.doctor_sync(tmp_path)
    assert report.ok and [c.name for c in report.checks] == ALL


class _Listing(LocalObjectStore):
    """A local store whose listings come in reverse order, optionally missing the first name."""

    def __init__(self, root: Path, drop_one: bool) -> None:
        super().__init__(root)
        self.drop_one = drop_one

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        infos = [info async for info in super().list(prefix)]
        if self.drop_one and "/list/" in prefix:
            infos = infos[1:]
        for info in reversed(infos):
            yield info


@pytest.mark.parametrize("drop_one", [False, True])
async def test_listing_must_be_complete_not_ordered(tmp_path: Path, drop_one: bool) -> None:
    """S3 Express directory buckets list out of order (from AWS's docs); kvstore reads every
    name, so only a missing one fails."""
    report = await kvstore.doctor(tmp_path, wrap_object_store=lambda _: _Listing(tmp_path, drop_one))
    check = next(c for c in report.checks if c.name == "listing")
    if drop_one:
        assert check.result == "fail" and check.detail.startswith("a listing of 10 objects returned ["), check
        assert report.failed == ["listing"]
    else:
        assert check.result == "pass" and "not in byte order" in check.detail, check
        assert report.ok


class _RejectsCopyConditions(LocalObjectStore):
    """An endpoint that answers 400 to a conditional CopyObject, as some refuse a header they lack."""

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        raise kvstore.StoreUnavailableError(
            f"{self.description} rejected a request on {destination!r}: InvalidRequest (HTTP 400)"
        )


async def test_a_rejected_request_fails_its_property_only(tmp_path: Path) -> None:
    report = await kvstore.doctor(tmp_path, wrap_object_store=lambda _: _RejectsCopyConditions(tmp_path))
    assert report.failed == ["copy-conditions"]
    assert "InvalidRequest (HTTP 400)" in report.checks[ALL.index("copy-conditions")].detail
    assert list(tmp_path.iterdir()) == []


async def test_an_unreachable_endpoint_raises_within_the_deadline() -> None:
    """Nothing listens there: one error naming the endpoint, not a report of twelve failures."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connections are refused
    started = time.monotonic()
    with pytest.raises(kvstore.StoreUnavailableError, match=f"127.0.0.1:{port}"):
        await kvstore.doctor(
            "s3://bucket",
            endpoint_url=f"http://127.0.0.1:{port}",
            retry=kvstore.RetryPolicy(max_attempts=3, attempt_timeout=2, total_timeout=4),
        )
    assert time.monotonic() - started < 30
