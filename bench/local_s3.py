"""A LocalStack S3 endpoint for one benchmark run, with a bucket made and latency proxies
on request, all stopped when the run ends; and the run's machine record."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import CREDENTIALS, REGION, ensure_bucket
from run import loadavg, machine, start_proxy


@dataclass
class LocalS3:
    """A running LocalStack and one bucket on it."""

    endpoint_url: str
    bucket: str
    _proxies: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def direct(self) -> dict[str, Any]:
        """`kvstore.open` keywords reaching the endpoint itself."""
        return {"endpoint_url": self.endpoint_url, "region_name": REGION, **CREDENTIALS}

    def proxied(self, latency_ms: float) -> dict[str, Any]:
        """`kvstore.open` keywords reaching it through a proxy adding `latency_ms` per request
        (started now, stopped with the endpoint)."""
        proxy, endpoint = start_proxy(self.endpoint_url, latency_ms)
        self._proxies.append(proxy)
        return {**self.direct, "endpoint_url": endpoint}


@asynccontextmanager
async def local_s3(workdir: Path, bucket: str = "kvbench") -> AsyncIterator[LocalS3]:
    """LocalStack started under `workdir` with `bucket` made; stopped (with every proxy) on exit."""
    from servers import start_localstack

    server = start_localstack(workdir / "localstack")
    s3 = LocalS3(server.endpoint_url, bucket)
    try:
        await ensure_bucket(server.endpoint_url, bucket)
        yield s3
    finally:
        for proxy in s3._proxies:
            proxy.kill()
            proxy.wait(10)
        server.stop()


def run_meta(**fields: Any) -> dict[str, Any]:
    """A result's "meta": the run's parameters, the machine and its load at the start
    (`finish_meta` adds the load at the end)."""
    return {**fields, "machine": machine(), "loadavg_start": loadavg()}


def finish_meta(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with the load at the end recorded in its meta."""
    results["meta"]["loadavg_end"] = loadavg()
    return results
