"""Start and stop real S3 endpoints (LocalStack, moto) as subprocesses for the tests.

No pytest here: the fixtures in ``conftest.py`` are thin wrappers, and the functions can be
used from a REPL or a benchmark just as well (from the repo root, with ``.venv/bin/python``)::

    import sys; sys.path.insert(0, "tests")
    from pathlib import Path
    from servers import start_localstack
    server = start_localstack(Path("/tmp/ls"))
    ...  # use server.endpoint_url
    server.stop()

Both servers listen on 127.0.0.1 on a free port and log to a file (``Server.log_path``).
All waits poll with a short interval against a deadline.

LocalStack (S3 only, no Docker)
    Runs ``.localstack-venv/bin/python -m localstack.runtime.main`` (Python 3.13 venv made by
    ``./scripts/test.sh``; override the interpreter with ``KVSTORE_LOCALSTACK_PYTHON``).
    Besides the variables of the shared recipe we set:

    * ``OVERRIDE_IN_DOCKER=0``: these machines have ``/.dockerenv``, so LocalStack believes it
      runs in its own container.  It then ignores ``FILESYSTEM_ROOT`` and writes to
      ``/var/lib/localstack``, ``/etc/localstack`` and ``/usr/lib/localstack``, and at import it
      runs ``ping 172.17.0.1`` / ``172.18.0.1`` to find a Docker bridge (silently skipped only
      because ``ping`` is not installed).  With the override everything stays under ``workdir``.
    * ``DOCKER_BRIDGE_IP=127.0.0.1`` so no code path ever targets the default 172.17.0.1.
    * ``TMPDIR=workdir/tmp``: LocalStack's S3 spills object bodies over 512 KiB to temporary
      files (its log then warns "TMPDIR is deprecated": harmless).
    * ``PERSISTENCE=0``.

    and LocalStack's S3 object store, hard-coded to ``/tmp/localstack-s3-storage`` (a
    directory per bucket, shared by all LocalStacks on the machine, never removed), is moved
    to ``workdir/tmp/s3-storage`` by a two-line bootstrap that then runs
    ``localstack.runtime.main`` (see ``_LOCALSTACK_BOOTSTRAP``).

    A cold start spends ~5 s building a service-catalog cache (``service-catalog-*.dill``);
    with it a start takes ~2.5 s.  We keep that cache in ``<localstack venv>/kvstore-cache``
    and copy it into each fresh ``FILESYSTEM_ROOT`` (copy, not symlink: LocalStack writes the
    file non-atomically, so concurrent sessions must not share it; we publish it atomically).

    Still left: LocalStack resolves ``s3.localhost.localstack.cloud`` once through the system
    resolver when it starts (``localstack.utils.aws.aws_stack.get_s3_hostname``); the result
    does not matter for path-style requests to 127.0.0.1.

moto (``moto[server]`` from the test venv)
    ``sys.executable -m moto.server -H 127.0.0.1 -p PORT``.  With ``auth=True`` the env var
    ``INITIAL_NO_AUTH_ACTION_COUNT=0`` turns on moto's IAM authentication from the first
    request (``moto/core/authorization.py``: requests are authenticated once
    ``request_count >= INITIAL_NO_AUTH_ACTION_COUNT``; the default is infinity).  Verified with
    moto 5.2.5: an unknown access key (random ``AKIA…`` or ``test``) gets HTTP 403
    ``InvalidAccessKeyId`` on PutObject, CreateBucket and ListBuckets, whether or not the
    bucket exists.  No access key is valid on such a server (creating an IAM user would itself
    need credentials).  For valid ones (verified too): start with ``auth=False``, create an IAM
    user, an ``s3:*`` policy and an access key through IAM, then POST ``0`` to
    ``/moto-api/reset-auth`` with ``Content-Type: text/plain`` (a form-encoded body gives 500);
    that key then works, a wrong secret for it gets 403 ``SignatureDoesNotMatch``.  Readiness
    is probed on ``/moto-api/config``, which is not an authenticated action.

Timings on this 2-core machine: LocalStack ready in ~2.5 s (cold cache ~7.5 s), stops in
~1.5 s (graceful); moto ready in ~0.8 s.
"""

from __future__ import annotations

import ctypes
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALSTACK_PYTHON_ENV = "KVSTORE_LOCALSTACK_PYTHON"
DEFAULT_LOCALSTACK_PYTHON = REPO_ROOT / ".localstack-venv" / "bin" / "python"

POLL_INTERVAL = 0.05
LOCALSTACK_START_TIMEOUT = 60.0
MOTO_START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 3  # a free port can be taken between probing and binding: retry on a new one

# Never handed to the emulators: they run another interpreter or must not be redirected.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass
class Server:
    """A running emulator subprocess."""

    name: str
    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _on_stop: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate, wait up to ``timeout`` s, then kill.  Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        while self._on_stop:
            self._on_stop.pop()()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log at {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved here, not in the forked child


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """SIGTERM the server when the thread that started it dies (pytest-timeout's os._exit,
    a SIGKILL), so no emulator outlives the test session (Linux PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def _spawn(name: str, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        shown = [a if "\n" not in a else "<script>" for a in argv]
        log.write(f"--- {name}: {' '.join(shown)}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # PDEATHSIG follows the starting *thread*: only tie it to the main thread.
            preexec_fn=_die_with_parent  # noqa: PLW1509 - resolved before fork, no locks taken
            if _PRCTL is not None and threading.current_thread() is threading.main_thread()
            else None,
        )


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) for any HTTP answer, None if nothing answers yet."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, http.client.HTTPException):
        return None


def _wait_ready(server: Server, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with code {server.process.returncode} before it was "
                f"ready; log {server.log_path}:\n{server.log_tail()}"
            )
        if probe():
            return
        if time.monotonic() >= deadline:
            server.stop()
            raise RuntimeError(
                f"{server.name} not ready at {server.endpoint_url} after {timeout:.0f} s; "
                f"log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(POLL_INTERVAL)


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in _SCRUBBED_ENV:
        env.pop(name, None)
    return env


def _start(
    name: str,
    make: Callable[[int], tuple[list[str], dict[str, str]]],
    log_path: Path,
    cwd: Path,
    probe: Callable[[str], bool],
    timeout: float,
) -> Server:
    """Spawn on a free port and wait until ``probe(endpoint_url)``; retry on a new port when
    the process dies early because the port was taken meanwhile."""
    for attempt in range(_PORT_ATTEMPTS):
        port = free_port()
        argv, env = make(port)
        log_start = log_path.stat().st_size if log_path.exists() else 0
        url = f"http://127.0.0.1:{port}"
        server = Server(name, url, _spawn(name, argv, env, log_path, cwd), log_path)
        try:
            _wait_ready(server, functools.partial(probe, url), timeout)
            return server
        except RuntimeError:
            server.stop()
            with open(log_path, "rb") as log:
                log.seek(log_start)
                port_clash = b"address already in use" in log.read().lower()
            if not port_clash or attempt == _PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- clients

TEST_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
TEST_REGION = "us-east-1"


@functools.cache
def _aio_session() -> Any:
    """One aiobotocore session for all test clients: it caches the loaded service model, so
    a client costs ~10 ms instead of ~150 ms.  Not tied to an event loop."""
    from aiobotocore.session import get_session

    return get_session()


def s3_client(endpoint_url: str, *, credentials: Mapping[str, str] = TEST_CREDENTIALS, **config: Any) -> Any:
    """An aiobotocore S3 client (``async with``) for a test endpoint.  ``config`` goes to
    ``AioConfig`` (e.g. ``retries={"total_max_attempts": 1}``, ``max_pool_connections=32``)."""
    from aiobotocore.config import AioConfig

    return _aio_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=TEST_REGION,
        config=AioConfig(**config) if config else None,
        **credentials,
    )


def unique_bucket_name(prefix: str = "kvt") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"  # 36 chars, lowercase: a valid S3 bucket name


# --------------------------------------------------------------------------- LocalStack


# `python -m localstack.runtime.main`, after pointing LocalStack's S3 object store at our workdir:
# it is hard-coded to /tmp/localstack-s3-storage (one directory per bucket, shared by every
# LocalStack on the machine and never cleaned up).  The provider reads the module global when
# it is instantiated, i.e. after this assignment.
_LOCALSTACK_BOOTSTRAP = """\
import os, runpy, sys
try:
    import localstack.services.s3.provider as s3_provider
    s3_provider.DEFAULT_S3_TMP_DIR = os.environ["KVSTORE_S3_STORAGE_DIR"]
except Exception as exc:  # a newer LocalStack: run it unchanged
    print("kvstore: could not relocate LocalStack's S3 storage:", repr(exc), file=sys.stderr)
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
"""


def localstack_python() -> Path:
    # abspath, not resolve(): a venv's bin/python is a symlink that must stay one
    return Path(os.path.abspath(os.environ.get(LOCALSTACK_PYTHON_ENV) or DEFAULT_LOCALSTACK_PYTHON))


def _localstack_cache_dir(python: Path) -> Path | None:
    venv = python.parent.parent
    return venv / "kvstore-cache" if (venv / "pyvenv.cfg").is_file() else None


def _publish_cache(src: Path, dst: Path) -> None:
    """Copy new cache files atomically (copy to a temp name, rename)."""
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if item.is_file() and not target.exists():
            tmp = dst / f".{item.name}.{os.getpid()}.tmp"
            try:
                shutil.copy2(item, tmp)
                os.replace(tmp, target)
            except OSError:
                tmp.unlink(missing_ok=True)


def _localstack_s3_ready(url: str) -> bool:
    answer = _http_get(f"{url}/_localstack/health")
    if answer is None or answer[0] != 200:
        return False
    try:
        state = json.loads(answer[1])["services"]["s3"]
    except (ValueError, KeyError, TypeError):
        return False
    return state in ("available", "running")


def start_localstack(workdir: Path, timeout: float = LOCALSTACK_START_TIMEOUT) -> Server:
    """Start LocalStack with S3 only; state, temp files and log live in ``workdir``."""
    python = localstack_python()
    if not os.access(python, os.X_OK):
        raise RuntimeError(
            f"LocalStack interpreter {python} not found: run ./scripts/test.sh once to create "
            f".localstack-venv (or set {LOCALSTACK_PYTHON_ENV} to a Python 3.13 that has "
            "localstack-core installed)"
        )
    workdir = Path(workdir).resolve()
    fs_root = workdir / "fs"
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    run_cache = fs_root / "var" / "lib" / "localstack" / "cache"
    shared_cache = _localstack_cache_dir(python)
    if shared_cache is not None and shared_cache.is_dir():
        run_cache.mkdir(parents=True, exist_ok=True)
        for item in shared_cache.iterdir():
            if item.is_file() and not item.name.startswith("."):
                shutil.copy2(item, run_cache / item.name)

    def make(port: int) -> tuple[list[str], dict[str, str]]:
        env = _base_env()
        env.update(
            SERVICES="s3",
            EAGER_SERVICE_LOADING="1",
            GATEWAY_LISTEN=f"127.0.0.1:{port}",
            DNS_ADDRESS="0",
            DISABLE_EVENTS="1",
            SKIP_SSL_CERT_DOWNLOAD="1",
            LOCALSTACK_VOLUME_DIR=str(workdir / "vol"),
            FILESYSTEM_ROOT=str(fs_root),
            OVERRIDE_IN_DOCKER="0",
            DOCKER_BRIDGE_IP="127.0.0.1",
            PERSISTENCE="0",
            TMPDIR=str(workdir / "tmp"),
        )
        env["KVSTORE_S3_STORAGE_DIR"] = str(workdir / "tmp" / "s3-storage")
        return [str(python), "-c", _LOCALSTACK_BOOTSTRAP], env

    server = _start("LocalStack", make, workdir / "localstack.log", workdir, _localstack_s3_ready, timeout)
    if shared_cache is not None:
        _publish_cache(run_cache, shared_cache)
        server._on_stop.append(lambda: _publish_cache(run_cache, shared_cache))
    return server


# --------------------------------------------------------------------------- moto


def _moto_ready(url: str) -> bool:
    return _http_get(f"{url}/moto-api/config") is not None


def start_moto(auth: bool, log_dir: Path | None = None, timeout: float = MOTO_START_TIMEOUT) -> Server:
    """Start ``moto_server`` from the running interpreter's environment.

    ``auth=True``: every request is authenticated (``INITIAL_NO_AUTH_ACTION_COUNT=0``), so any
    access key gets 403 ``InvalidAccessKeyId``.  ``auth=False``: moto accepts anything.
    """
    if log_dir is None:
        log_dir = Path(tempfile.mkdtemp(prefix="kvstore-moto-"))
    log_path = Path(log_dir) / f"moto-{'auth' if auth else 'noauth'}.log"

    def make(port: int) -> tuple[list[str], dict[str, str]]:
        env = _base_env()
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        return argv, env

    return _start("moto", make, log_path, Path(log_dir), _moto_ready, timeout)


def start_shield(upstream: str, log_dir: Path, timeout: float = MOTO_START_TIMEOUT) -> Server:
    """Start a fault-free `kvstore.testing.netproxy` in front of ``upstream`` (a subprocess).

    The proxy is store-and-forward: it sends a request upstream only once it has all of it,
    and always reads the whole answer. So LocalStack never sees a client vanish mid-request
    or mid-answer, whatever a test does to its clients (SIGKILL, a deadline that abandons a
    stalled answer, a store closed with a request in flight). LocalStack's twisted gateway
    leaks the object's lock in that case and hangs every later request on the object
    (docs/reliability.md); behind the shield that cannot happen. Its readiness probe is
    LocalStack's health check, through the proxy.
    """
    log_path = Path(log_dir) / "shield.log"

    def make(port: int) -> tuple[list[str], dict[str, str]]:
        argv = [
            sys.executable,
            "-m",
            "kvstore.testing.netproxy",
            "--upstream",
            upstream,
            "--port",
            str(port),
            "--log-level",
            "ERROR",
        ]
        return argv, _base_env()

    def ready(url: str) -> bool:
        answer = _http_get(f"{url}/_localstack/health")
        return answer is not None and answer[0] == 200

    return _start("shield", make, log_path, Path(log_dir), ready, timeout)
