"""Every example runs, on the local filesystem with no setup and on S3 with one option."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
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
