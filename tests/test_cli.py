"""The `kvstore` command line, driven as a subprocess (``python -m kvstore``) and in-process.

One scenario runs on the local filesystem and on LocalStack S3. Starting
Python and importing kvstore costs about a second of CPU per command, so the
scenario runs in rounds: the commands of a round are independent of each other
and run concurrently, and each round starts after the previous one ended.

The focused tests after it call `kvstore._cli.main` in this process (`invoke`),
which costs milliseconds per command, with stdout and stderr as files that
may claim to be a terminal.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kvstore
from kvstore import _cli, _ttl

TIMEOUT = 90.0  # seconds for one command; they take one or two


@dataclass
class Call:
    """One `kvstore` invocation."""

    args: list[str]
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Done:
    """The outcome of a Call."""

    args: list[str]
    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    def json(self) -> Any:
        assert self.rc == 0, self.describe()
        return json.loads(self.out)

    def ok(self) -> Done:
        assert self.rc == 0, self.describe()
        return self

    def describe(self) -> str:
        return f"kvstore {' '.join(self.args)} -> rc {self.rc}\nstdout: {self.out[:2000]!r}\nstderr: {self.err}"

    def one_line_error(self, rc: int, *fragments: str) -> None:
        """Exit code `rc`, nothing on stdout, one line on stderr naming `fragments`."""
        assert self.rc == rc, self.describe()
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvstore: error: "), self.describe()
        assert "Traceback" not in self.err
        for fragment in fragments:
            assert fragment in lines[0], self.describe()


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KVSTORE_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")
    }
    return {**env, **extra}


def _start(call: Call, stderr: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvstore", *call.args],
        stdin=subprocess.PIPE if call.stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_env(call.env),
        preexec_fn=_hear_ctrl_c,  # noqa: PLW1509 - one signal call, no locks
    )


def _hear_ctrl_c() -> None:
    """Give the command Ctrl-C's default behaviour, as in a terminal. A test run started
    in the background of a non-interactive shell (nohup, `cmd &`) inherits SIGINT
    ignored, and Python then never turns SIGINT into KeyboardInterrupt: the watcher
    would not stop when the test interrupts it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(*calls: Call) -> list[Done]:
    """Run `calls` concurrently; wait for all of them."""
    procs = [_start(c) for c in calls]
    done = []
    for call, proc in zip(calls, procs, strict=True):
        out, err = proc.communicate(call.stdin, timeout=TIMEOUT)
        done.append(Done(call.args, proc.returncode, out, err.decode()))
    return done


def kv(*args: str, stdin: bytes | None = None, **env: str) -> Call:
    return Call(list(args), stdin, env)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SEED = [
    {"key": "users/1", "value": b64(b"one")},
    {"key": "users/2", "value": b64(b"two")},
    {"key": "users/3", "value": b64(b"three")},
    {"key_base64": b64(b"\xff\x00"), "value": b64(b"\x00")},
]
DOC = {"name": "Ada", "langs": ["en", "fr"], "n": 3, "raw": {"$base64": b64(b"\x00\x01")}}
BLOB = b"\x00\xffraw bytes\n"


def _read_line(stream: Any, deadline: float) -> str:
    """One line from a subprocess's pipe, waiting at most until `deadline`."""
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), f"no line on stderr in time (got {buf!r})"
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                break
            buf += chunk
    return buf.decode()


def _seed_files(tmp: Path) -> tuple[Path, Path, Path]:
    seed = tmp / "seed.jsonl"
    seed.write_text("".join(json.dumps(d) + "\n" for d in SEED))
    doc = tmp / "doc.json"
    doc.write_text(json.dumps(DOC))
    return seed, doc, tmp / "export.jsonl"


def test_cli_on_local_filesystem(tmp_path: Path) -> None:
    """Every subcommand and most options on a local store, with exit codes and JSON output."""
    url, url2 = str(tmp_path / "store"), str(tmp_path / "copy")
    root = tmp_path / "store"
    seed, doc, exported = _seed_files(tmp_path)

    # Round 1: create.
    (init,) = run(kv("init", url, "--json"))
    assert init.json() == {"url": f"file://{root}", "created": True, "version": 0}

    # Round 2: one commit each (versions 1-4 in some order); usage and input errors.
    imported, greeting, blob, msg, bad_import, help_, no_url, debug = run(
        kv("import", url, "-f", str(seed), "--json"),
        kv("put", url, "greeting", "hello", "--json"),
        kv("put", url, "blob", "-", stdin=BLOB),
        kv("put", url, "doc", "--file", str(doc), "--json"),
        kv("import", url, "--json", stdin=b'{"key": "x", "value": "eA=="}\nnot json\n'),
        kv("--help"),
        kv("get", "k"),
        kv("--debug", "get", str(tmp_path / "none"), "k"),
    )
    assert imported.json()["keys"] == 4
    assert greeting.json()["key"] == "greeting"
    assert blob.ok().text.startswith(f"put blob ({len(BLOB)} bytes) at version ")
    assert msg.json()["key"] == "doc"
    versions = {imported.json()["version"], greeting.json()["version"], msg.json()["version"]}
    assert len(versions) == 3 and versions <= {1, 2, 3, 4}
    bad_import.one_line_error(1, "line 2", "not JSON")
    text = help_.ok().text
    for command in (
        "init",
        "info",
        "get",
        "put",
        "delete",
        "scan",
        "history",
        "tag",
        "compact",
        "split",
        "gc",
        "verify",
        "export",
        "import",
        "watch",
    ):
        assert f"\n  {command} " in text, command
    assert "alias: ls" in text and "Exit codes:" in text and "KVSTORE_URL" in text
    assert no_url.rc == 2 and "KVSTORE_URL" in no_url.err, no_url.describe()
    assert debug.rc == 3 and "Traceback" in debug.err, debug.describe()
    assert debug.err.strip().splitlines()[-1].startswith("kvstore: error: no kvstore at")
    assert not (tmp_path / "none").exists()  # read commands never create a store

    # Round 3: reads of version 4, a tag, an export.  (Raw `get` output: round 4.)
    get_json, get_doc, get_missing, scan_json, ls_keys, hist, info, tag, export = run(
        kv("get", url, "blob", "--json"),
        kv("get", url, "doc"),
        kv("get", url, "nope"),
        kv("scan", url, "--prefix", "users/", "--json"),
        kv("ls", url, "--start", "users/2", "--end", "users/9", "--reverse", "--limit", "1", "--keys-only"),
        kv("history", url, "--json"),
        kv("info", url, "--json"),
        kv("tag", "create", url, "release", "--json"),
        kv("export", url, "-o", str(exported), "--json"),
    )
    assert get_json.json() == {"key": "blob", "value": b64(BLOB), "version": 4}
    assert json.loads(get_doc.ok().out) == DOC
    get_missing.one_line_error(3, "'nope' not found")
    assert scan_json.json() == [
        {"key": f"users/{i}", "value": b64(v)} for i, v in ((1, b"one"), (2, b"two"), (3, b"three"))
    ]
    assert ls_keys.ok().text == "users/3\n"
    assert [(c["version"], c["kind"]) for c in hist.json()] == [
        (4, "commit"),
        (3, "commit"),
        (2, "commit"),
        (1, "commit"),
    ]
    assert sorted(c["key_count"] for c in hist.json()) == [1, 1, 1, 4]
    facts = info.json()
    assert facts["version"] == 4 and facts["keys"] == {"count": 7, "exact": True, "stored_entries": 7}
    assert facts["segments"] == 4 and facts["segments_per_level"] == {"0": 4} and facts["bytes"] > 0
    assert facts["commits_in_log"] == 4  # ("tags" races with `tag create`)
    assert facts["options"]["max_key_bytes"] == 4096
    assert tag.json()["name"] == "release" and tag.json()["version"] == 4
    assert export.json() == {"version": 4, "keys": 7, "output": str(exported)}
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [d.get("key") for d in lines] == ["blob", "doc", "greeting", "users/1", "users/2", "users/3", None]
    assert lines[-1] == {"key_base64": b64(b"\xff\x00"), "value": b64(b"\x00")}
    assert {"key": "greeting", "value": b64(b"hello")} in lines

    # Round 4: a delete seen by a watcher, a taken tag, compaction, import elsewhere.
    watcher = _start(
        kv("watch", url, "--since", "4", "--count", "1", "--interval", "0.05", "--json", "--prefix", "greet")
    )
    deleted, tag_taken, tags, at_tag, compacted, imported2, keys = run(
        kv("delete", url, "greeting", "--json"),
        kv("tag", "create", url, "release"),
        kv("tag", "list", url, "--json"),
        kv("get", url, "greeting", "--tag", "release"),
        kv("compact", url, "--full", "--json"),
        kv("import", url2, "-f", str(exported)),
        kv("scan", "--keys-only", "--version", "4", KVSTORE_URL=url),
    )
    out, err = watcher.communicate(timeout=TIMEOUT)
    assert watcher.returncode == 0, err
    assert json.loads(out) == {
        "version": deleted.json()["version"],
        "time": json.loads(out)["time"],
        "keys": [{"key": "greeting", "op": "delete"}],
    }
    tag_taken.one_line_error(4, "'release' exists")
    assert [(t["name"], t["version"]) for t in tags.json()] == [("release", 4)]
    assert at_tag.ok().out == b"hello"
    assert compacted.json() and compacted.json()[-1]["inputs"] >= 4
    assert imported2.ok().text == "imported 7 keys at version 1\n"
    assert keys.ok().text.splitlines() == ["blob", "doc", "greeting", "users/1", "users/2", "users/3", "\\xff\\x00"]

    # Round 5: the copy equals the original; the tag goes.
    copy, untag, missing_tag = run(
        kv("export", url2), kv("tag", "delete", url, "release", "--json"), kv("get", url, "k", "--tag", "nope")
    )
    assert copy.ok().text == exported.read_text()
    assert untag.json() == {"name": "release", "deleted": True}
    missing_tag.one_line_error(3, "no tag 'nope'")

    # Round 6: garbage collection, dry run first; never with less than the writers' grace period.
    dry, too_short = run(
        kv("gc", url, "--dry-run", "--json"), kv("gc", url, "--dry-run", "--grace-period", "0", "--json")
    )
    report = dry.json()
    assert report["dry_run"] is True and report["grace_period"] == 3600 and report["objects_waiting"] > 0
    assert report["deleted"] == [] and report["objects_deleted"] == 0  # everything is young
    too_short.one_line_error(2, "--grace-period 0 s is shorter than", "(3600 s", "Use at least 3600 s")

    # Round 7: the real collection; damage in the copy is found.
    (segment,) = (tmp_path / "copy" / "segments").iterdir()
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    gc, damaged = run(kv("gc", url, "--json"), kv("verify", url2))
    assert gc.json()["objects_deleted"] == 0 and gc.json()["objects_waiting"] == report["objects_waiting"]
    assert damaged.rc == 5 and f"DAMAGED segments/{segment.name}" in damaged.text, damaged.describe()


def test_cli_on_s3(s3_bucket: tuple[str, str], tmp_path: Path) -> None:
    """Every subcommand once on LocalStack, the endpoint given every AWS way."""
    endpoint_url, bucket = s3_bucket
    url = f"s3://{bucket}/cli"
    seed, _, exported = _seed_files(tmp_path)
    e = ["--endpoint-url", endpoint_url]

    (init,) = run(kv(*e, "init", url, "--json"))  # the option before the subcommand
    assert init.json() == {"url": f"{url}/", "created": True, "version": 0}

    imported, greeting = run(
        kv("import", url, "-f", str(seed), AWS_ENDPOINT_URL_S3=endpoint_url),
        kv("put", url, "greeting", "-", *e, stdin=b"hello"),  # the option after it
    )
    assert imported.ok().text.startswith("imported 4 keys at version ")
    assert greeting.ok().text.startswith("put greeting (5 bytes) at version ")

    get, scan, hist, info, verify, tag, missing_bucket = run(
        kv(*e, "get", url, "greeting"),
        kv("scan", "--json", KVSTORE_URL=url, AWS_ENDPOINT_URL=endpoint_url),
        kv(*e, "history", url, "--json"),
        kv(*e, "info", url, "--json"),
        kv(*e, "verify", url, "--json"),
        kv(*e, "tag", "create", url, "v2"),
        kv(*e, "info", "s3://no-such-bucket-kvstore-cli/x"),
    )
    assert get.ok().out == b"hello"
    assert [d["key"] for d in scan.json()[:4]] == ["greeting", "users/1", "users/2", "users/3"]
    assert [c["version"] for c in hist.json()] == [2, 1]
    assert info.json()["version"] == 2 and info.json()["keys"]["count"] == 5 and info.json()["segments"] == 2
    assert verify.json() == {"version": 2, "objects_checked": 3, "ok": True, "damaged": {}}
    assert tag.ok().text == "tagged version 2 as v2\n"
    missing_bucket.one_line_error(3, "does not exist")

    # A watcher sees the delete; Ctrl-C stops it with exit code 0.
    watcher = _start(kv(*e, "watch", url, "--interval", "0.2", "--prefix", "greeting"))
    deadline = time.monotonic() + TIMEOUT
    assert _read_line(watcher.stderr, deadline).startswith(f"watching {url}/ for commits after version 2")
    deleted, tags, export, compacted = run(
        kv(*e, "delete", url, "greeting", "--json"),
        kv(*e, "tag", "list", url),
        kv(*e, "export", url, "--tag", "v2", "-o", str(exported)),
        kv(*e, "compact", url, "--full"),
    )
    seen = _read_line(watcher.stdout, deadline)
    assert seen.startswith(f"{deleted.json()['version']}  ") and seen.endswith("  delete  greeting\n"), seen
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=TIMEOUT)
    assert watcher.returncode == 0 and b"Traceback" not in err, err
    assert tags.ok().text.splitlines()[1].startswith("v2    2 ")
    assert export.ok().text == f"exported 5 keys at version 2 to {exported}\n"
    assert "merged 3 segments into level 1" in compacted.ok().text or "merged 2 segments" in compacted.text

    (untag,) = run(kv(*e, "tag", "delete", url, "v2"))
    assert untag.ok().text == "deleted tag v2\n"
    (gc,) = run(kv(*e, "gc", url))
    assert gc.ok().text.startswith("deleted 0 objects"), gc.describe()  # young: kept for the grace period
    assert "kept for the grace period (1 h)" in gc.text, gc.describe()


# ----------------------------------------------------------------- in-process, one behaviour each


class _Stream(io.TextIOWrapper):
    """A text stream over bytes (with .buffer, like sys.stdout) that may claim to be a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", newline="")
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def value(self) -> bytes:
        self.flush()
        buffer = self.buffer
        assert isinstance(buffer, io.BytesIO)
        return buffer.getvalue()


def invoke(
    monkeypatch: pytest.MonkeyPatch, *args: str, tty: bool = False, stdin: bytes = b"", url: str | None = None
) -> Done:
    """Run `kvstore ARGS` through `_cli.main` in this process; stdout and stderr are terminals
    when `tty`; KVSTORE_URL is `url` (unset when None)."""
    out, err = _Stream(tty), _Stream(tty)
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", out)
        m.setattr(sys, "stderr", err)
        m.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        for name in ("KVSTORE_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            m.delenv(name, raising=False)
        if url is not None:
            m.setenv("KVSTORE_URL", url)
        try:
            _cli.main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return Done(list(args), rc, out.value(), err.value().decode())


def _usage_error(done: Done, *fragments: str) -> None:
    """Exit code 2 with click's usage message naming `fragments`; nothing written to stdout."""
    assert done.rc == 2 and not done.out and "Usage: kvstore" in done.err, done.describe()
    for fragment in fragments:
        assert fragment in done.err, done.describe()


def test_a_url_is_never_taken_as_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With as many arguments as the command's names, a first argument that looks like a store
    URL means one is missing (exit 2); it is never written as a key into KVSTORE_URL's store."""
    monkeypatch.chdir(tmp_path)
    invoke(monkeypatch, "init", "s1").ok()
    env_store = str(tmp_path / "env-store")
    invoke(monkeypatch, "init", env_store).ok()

    for first in ("./s2", "s1", str(tmp_path / "s2"), "s3://bucket/app", "~/s2", "../s2"):
        _usage_error(
            invoke(monkeypatch, "put", first, "greeting", url=env_store),
            "missing VALUE",
            f"{first!r} is taken as the store URL",
        )
    _usage_error(invoke(monkeypatch, "put", "s1", "onlykey"), "missing VALUE", "kvstore put [URL] KEY VALUE")
    _usage_error(invoke(monkeypatch, "get", "./s1", url=env_store), "missing KEY")
    _usage_error(invoke(monkeypatch, "put", "s1", "k", "v", "extra"), "too many arguments")
    _usage_error(invoke(monkeypatch, "put", "greeting", "hello"), "no store URL", "KVSTORE_URL is not set")
    assert invoke(monkeypatch, "scan", "--keys-only", url=env_store).ok().out == b""  # nothing was written

    # A plain word with KVSTORE_URL set is a key; the URL given first is always the URL.
    invoke(monkeypatch, "put", "greeting", "hello", url=env_store).ok()
    invoke(monkeypatch, "put", env_store, "./path-like/key", "v").ok()
    keys = invoke(monkeypatch, "scan", env_store, "--keys-only").ok().text.splitlines()
    assert keys == ["./path-like/key", "greeting"]


def test_errors_are_in_command_line_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store errors name commands and options, not Python; OS errors name the path and the reason;
    bad arguments exit 2."""
    monkeypatch.chdir(tmp_path)
    invoke(monkeypatch, "init", "s1").ok()
    invoke(monkeypatch, "put", "s1", "k", "v").ok()

    invoke(monkeypatch, "put", "nostore", "k", "v").one_line_error(3, "no kvstore at", "`kvstore init nostore`")
    invoke(monkeypatch, "get", "s1", "k", "--tag", "nope").one_line_error(3, "`kvstore tag list s1` lists them")
    invoke(monkeypatch, "get", "s1", "k", "--version", "1", "--tag", "x").one_line_error(
        2, "give --version or --tag, not both"
    )
    invoke(monkeypatch, "get", "s1", "k", "--version", "99").one_line_error(
        2, "version 99 does not exist yet: the latest version of", "s1 is 1;", "leave --version out"
    )
    invoke(monkeypatch, "put", "s1", "", "v").one_line_error(2, "key")
    invoke(monkeypatch, "init", "m1", "--values", "msgpack").ok()
    invoke(monkeypatch, "put", "m1", "k", "{").one_line_error(2, "values are given as JSON text")
    blocked = tmp_path / "file"
    blocked.write_text("")
    invoke(monkeypatch, "init", f"{blocked}/store").one_line_error(1, f"cannot use {blocked}", "Not a directory")
    invoke(monkeypatch, "init", "/proc/kvstore-test").one_line_error(
        1, "cannot use /proc/kvstore-test", "No such file or directory"
    )
    for done in [
        invoke(monkeypatch, *a)
        for a in (
            ("put", "nostore", "k", "v"),
            ("get", "s1", "k", "--tag", "nope"),
            ("get", "s1", "k", "--version", "99"),
            ("init", "/proc/kvstore-test"),
        )
    ]:
        assert not re.search(r"\w=\W|\w\(\)|StoreOptions|Store\.|unexpected", done.err), done.describe()

    # Messages hard to provoke from the command line.
    messages = [
        "no kvstore at s3://b/p/: open it with create=True (and not read_only) to make one, or check the URL",
        (
            "transaction read data that version 7 changed after its read version 6; nothing was written: "
            "retry it (Store.transact does)"
        ),
        "segment segments/x.seg: checksum mismatch in its index; run `Store.verify()` to list damaged objects",
    ]
    for message in messages:
        translated = _cli.cli_message(message, "s3://b/p")
        assert not re.search(r"\w=\W|\w\(\)|Store\.", translated), translated


def test_get_ends_with_a_newline_on_a_terminal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    invoke(monkeypatch, "put", url, "k", "hello").ok()
    invoke(monkeypatch, "put", url, "nl", "-", stdin=b"line\n").ok()
    assert invoke(monkeypatch, "get", url, "k", tty=True).ok().out == b"hello\n"
    assert invoke(monkeypatch, "get", url, "nl", tty=True).ok().out == b"line\n"  # no second newline
    assert invoke(monkeypatch, "get", url, "k").ok().out == b"hello"  # piped: the bytes exactly


def test_get_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row (or JSON item) per KEY, in order, absent ones marked; exit 3 if any is absent
    (naming them on stderr, the output still whole), 0 with --missing-ok; --version reads the past;
    the URL from KVSTORE_URL when the first argument does not look like one."""
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    first = invoke(monkeypatch, "put", url, "a", "one", "--json").json()["version"]
    invoke(monkeypatch, "put", url, "b", "-", stdin=b"\x00\xff").ok()
    invoke(monkeypatch, "put", url, "a", "uno").ok()
    assert invoke(monkeypatch, "get-many", url, "a", "b", "a").ok().text.splitlines() == [
        "a  uno",
        "b  b'\\x00\\xff'",
        "a  uno",
    ]
    done = invoke(monkeypatch, "get-many", url, "a", "gone", "b", "gone")
    assert done.rc == 3, done.describe()
    assert done.text.splitlines() == ["a     uno", "gone  (absent)", "b     b'\\x00\\xff'", "gone  (absent)"]
    assert done.err == "kvstore: 2 of 4 keys not found at version 3: 'gone'\n"
    done = invoke(monkeypatch, "get-many", url, "a", "gone", "--json")
    assert done.rc == 3 and json.loads(done.out) == {
        "version": 3,
        "values": [
            {"key": "a", "found": True, "value": b64(b"uno")},
            {"key": "gone", "found": False, "value": None},
        ],
    }
    assert invoke(monkeypatch, "get-many", url, "gone", "a", "--missing-ok").ok().text == "gone  (absent)\na     uno\n"
    past = invoke(monkeypatch, "get-many", url, "a", "b", "--version", str(first), "--json", "--missing-ok").json()
    assert past["version"] == first and [v["value"] for v in past["values"]] == [b64(b"one"), None]
    assert invoke(monkeypatch, "get-many", "a", "b", url=url).ok().text.splitlines() == ["a  uno", "b  b'\\x00\\xff'"]
    _usage_error(invoke(monkeypatch, "get-many", url), "missing KEY")
    invoke(monkeypatch, "get-many", url, "").one_line_error(2, "empty")


def test_tables_cut_long_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    invoke(monkeypatch, "put", url, "big", "-", stdin=b"x" * 100_000).ok()
    invoke(monkeypatch, "put", url, "small", "short").ok()
    lines = invoke(monkeypatch, "scan", url).ok().text.splitlines()
    assert lines == [f"big    {'x' * 80}... (100000 bytes)", "small  short"]
    whole = invoke(monkeypatch, "scan", url, "--json").json()
    assert base64.b64decode(whole[0]["value"]) == b"x" * 100_000


def test_watch_shows_puts_and_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    invoke(monkeypatch, "put", url, "a", "1").ok()
    invoke(monkeypatch, "delete", url, "a").ok()
    text = invoke(monkeypatch, "watch", url, "--since", "0", "--count", "2").ok().text
    assert [line.split()[2:] for line in text.splitlines()] == [["put", "a"], ["delete", "a"]]
    docs = [
        json.loads(line)
        for line in invoke(monkeypatch, "watch", url, "--since", "0", "--count", "2", "--json").ok().text.splitlines()
    ]
    assert [d["keys"] for d in docs] == [[{"key": "a", "op": "put"}], [{"key": "a", "op": "delete"}]]


def test_deleting_a_missing_key_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like `get`, exit 3; no new version. --missing-ok makes it exit 0."""
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    invoke(monkeypatch, "put", url, "k", "v").ok()
    invoke(monkeypatch, "delete", url, "nope").one_line_error(3, "key 'nope' not found at version 1", "nothing deleted")
    quiet = invoke(monkeypatch, "delete", url, "nope", "--missing-ok", "--json").json()
    assert quiet == {"key": "nope", "version": 1, "deleted": False}
    assert invoke(monkeypatch, "info", url, "--json").json()["version"] == 1
    assert invoke(monkeypatch, "delete", url, "k").ok().text == "deleted k at version 2\n"


def test_writing_commands_compact_when_a_level_is_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command is a short-lived process: it runs the compaction its commit made due before
    exiting (a background one would be cancelled). `info` shows a level that is still due."""
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    notes = [invoke(monkeypatch, "put", url, f"k{i}", "v").ok().err for i in range(9)]
    assert notes[7] == "kvstore: compacted 8 segments into level 1 (version 9)\n"
    assert not any(notes[:7]) and not notes[8]
    facts = invoke(monkeypatch, "info", url, "--json").json()
    assert facts["segments_per_level"] == {"0": 1, "1": 1} and facts["compaction_due"] == []

    # A store filled by a program that never compacts: info says so and what to run.
    other = str(tmp_path / "other")

    async def fill() -> None:
        async with kvstore.open(other, options=kvstore.StoreOptions(auto_compact=False)) as db:
            for i in range(8):
                await db.put(f"k{i}", b"v")

    asyncio.run(fill())
    assert invoke(monkeypatch, "info", other, "--json").json()["compaction_due"] == [0]
    row = [line for line in invoke(monkeypatch, "info", other).ok().text.splitlines() if line.startswith("compaction ")]
    assert row == [
        (
            f"compaction                      due: level 0 holds 8 sources (fanout 8); "
            f"run `kvstore compact file://{other}`"
        )
    ]


def test_gc_says_why_it_keeps_objects_and_until_when(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    invoke(monkeypatch, "put", url, "k", "v").ok()
    assert invoke(monkeypatch, "gc", url).ok().text.splitlines() == [
        "deleted 0 objects (0 B); kept 0",
        (
            "nothing is unreferenced yet: every object belongs to the latest version, the commit log or a tag "
            "(small commits live inside the manifest and never need collecting)"
        ),
    ]
    # Merged segments named by the log, and an orphan (a commit that never finished).
    for i in range(16):
        invoke(monkeypatch, "put", url, f"k{i}", "v").ok()
    invoke(monkeypatch, "compact", url, "--full").ok()
    segment = min((tmp_path / "s" / "segments").iterdir())
    orphan = segment.with_name("0-orphan.seg")
    orphan.write_bytes(segment.read_bytes())
    mtime = orphan.stat().st_mtime
    lines = invoke(monkeypatch, "gc", url).ok().text.splitlines()
    assert lines[0] == "deleted 0 objects (0 B); kept 4"
    assert (
        "  kept 2: named by the commit log (versions 9..18); each becomes unreferenced when 1000 later "
        "commits have pushed it out of the log, and collectable a grace period after that" in lines
    )
    # Young, so not marked yet: marked once it is a grace period old, collectable one later.
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(mtime + 2 * 3600))
    assert lines[-1] == f"1 unreferenced object kept for the grace period (1 h): collectable after {when}"
    report = invoke(monkeypatch, "gc", url, "--dry-run", "--json").json()
    assert report["collectable_after"] == {f"segments/{orphan.name}": pytest.approx(mtime + 2 * 3600)}


def test_commands_keep_the_writers_grace_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose writers use a 120 s grace period: a writing command (default options)
    leaves the record at 120 s, and `gc --grace-period 120` applies it; a shorter period is
    refused, and so are nan and inf (a NaN passes every `<` check)."""
    url = str(tmp_path / "s")
    short = kvstore.StoreOptions(segment_grace_period=120, max_transaction_age=30)
    with kvstore.open_sync(url, create=True, options=short) as db:
        db.put(b"k", b"v")

    def recorded() -> float | None:
        with kvstore.open_sync(url, read_only=True) as db:  # a default open shows the record
            return db.options.segment_grace_period

    invoke(monkeypatch, "put", url, "k2", "v2").ok()
    assert recorded() == 120
    report = invoke(monkeypatch, "gc", url, "--grace-period", "120", "--json").json()
    assert report["grace_period"] == 120 and report["dry_run"] is False
    assert recorded() == 120
    invoke(monkeypatch, "gc", url, "--grace-period", "60").one_line_error(2, "(120 s", "Use at least 120 s")
    for bad in ("nan", "inf"):
        _usage_error(invoke(monkeypatch, "gc", url, "--grace-period", bad), "not a finite number of seconds")


def test_import_progress_counts_pairs_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed, _, _ = _seed_files(tmp_path)
    done = invoke(monkeypatch, "import", str(tmp_path / "s"), "-f", str(seed), tty=True).ok()
    frames = done.err.replace("\r", "\n").splitlines()
    shown = [m.group(0) for f in frames if (m := re.search(r"\d+ of \d+ pairs written", f))]
    assert shown and shown[-1] == "4 of 4 pairs written", done.err
    assert done.text == "imported 4 keys at version 1\n"


def test_local_s3_script_serves_a_bucket(tmp_path: Path) -> None:
    """scripts/local-s3.sh --background: the printed exports reach a bucket kvstore can use."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "local-s3.sh"
    state = tmp_path / "local-s3"
    started = subprocess.run(
        [str(script), "--background", "--dir", str(state), "--bucket", "try"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    try:
        assert started.returncode == 0, started.stderr
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", started.stdout, re.MULTILINE))
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:"), started.stdout
        assert (state / "env").read_text() == "".join(f"export {k}={v}\n" for k, v in exports.items())
        init = run(kv("init", "s3://try/app", **exports))[0]
        assert init.ok().text == "created store s3://try/app/ at version 0\n"
        put = run(kv("put", "s3://try/app", "greeting", "hello", **exports))[0]
        assert put.ok().text == "put greeting (5 bytes) at version 1\n"
        get = run(kv("get", "s3://try/app", "greeting", **exports))[0]
        assert get.ok().out == b"hello"
    finally:
        stopped = subprocess.run(
            [str(script), "--stop", "--dir", str(state)], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    assert stopped.returncode == 0 and "stopped" in stopped.stderr, stopped.stderr
    assert not (state / "pid").exists() and not (state / "env").exists()


# ----------------------------------------------------------------- the store's value codec

OBJECT = {"name": "Ada", "n": 3}
OBJECT_JSON = json.dumps(OBJECT)


def _python_get(url: str, key: str, values: Any) -> Any:
    """`key` of the store at `url`, read by the library with `values=`."""

    async def read() -> Any:
        async with kvstore.open(url, create=False, read_only=True, values=values) as db:
            return await db.get(key)

    return asyncio.run(read())


def test_init_records_the_codec_every_command_then_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """init --values msgpack makes a store Python opens with values="msgpack"; put, get and scan
    use the store's codec without being told; a store of bytes stays one."""
    monkeypatch.chdir(tmp_path)
    created = invoke(monkeypatch, "init", "m", "--values", "msgpack", "--json").json()
    assert created == {"url": f"file://{tmp_path}/m", "created": True, "version": 0}
    invoke(monkeypatch, "init", "b").ok()
    assert invoke(monkeypatch, "info", "m", "--json").json()["values"] == "msgpack"
    assert [
        line.split() for line in invoke(monkeypatch, "info", "b").ok().text.splitlines() if line.startswith("values ")
    ] == [["values", "bytes"]]

    for store in ("m", "b"):
        invoke(monkeypatch, "put", store, "doc", OBJECT_JSON).ok()
    assert _python_get("m", "doc", "msgpack") == OBJECT
    assert _python_get("b", "doc", "bytes") == OBJECT_JSON.encode()
    assert invoke(monkeypatch, "get", "m", "doc").ok().text == OBJECT_JSON + "\n"
    assert invoke(monkeypatch, "get", "m", "doc", "--values", "msgpack", "--json").json()["value"] == OBJECT
    assert invoke(monkeypatch, "get", "b", "doc", "--json").json()["value"] == b64(OBJECT_JSON.encode())
    assert invoke(monkeypatch, "scan", "m").ok().text == f"doc  {OBJECT_JSON}\n"

    async def write() -> None:
        async with kvstore.open("m", values="msgpack") as db:
            await db.put("py", [1, b"\x00"])

    asyncio.run(write())
    assert invoke(monkeypatch, "get", "m", "py", "--json").json()["value"] == [1, {"$base64": "AA=="}]


def test_a_values_option_the_store_does_not_record_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 2 naming the --values to use, and nothing written; an empty store takes the --values
    of its first write, as kvstore.open does, but not of a read."""
    monkeypatch.chdir(tmp_path)
    invoke(monkeypatch, "init", "m", "--values", "msgpack").ok()
    invoke(monkeypatch, "put", "m", "k", "1").ok()
    line = b'{"key": "x", "value": "eA=="}\n'
    for args in (
        ("get", "m", "k"),
        ("put", "m", "k", "v"),
        ("scan", "m"),
        ("export", "m"),
        ("import", "m"),
        ("init", "m"),
    ):
        invoke(monkeypatch, *args, "--values", "bytes", stdin=line).one_line_error(
            2, "m stores msgpack values, not bytes: use --values msgpack, or leave --values out"
        )
    invoke(monkeypatch, "export", "m", "--values", "base64").one_line_error(2, "use --values msgpack")
    assert invoke(monkeypatch, "info", "m", "--json").json()["version"] == 1

    invoke(monkeypatch, "init", "b").ok()
    invoke(monkeypatch, "put", "b", "k", "v").ok()
    invoke(monkeypatch, "put", "b", "k", "1", "--values", "msgpack").one_line_error(
        2, "b stores bytes values, not msgpack: use --values bytes"
    )
    assert _python_get("b", "k", "bytes") == b"v"

    invoke(monkeypatch, "init", "e").ok()
    invoke(monkeypatch, "get", "e", "k", "--values", "msgpack").one_line_error(2, "use --values bytes")
    invoke(monkeypatch, "put", "e", "k", "[1, 2]", "--values", "msgpack").ok()
    assert invoke(monkeypatch, "info", "e", "--json").json()["values"] == "msgpack"
    assert _python_get("e", "k", "msgpack") == [1, 2]


def test_import_creates_a_store_of_its_codec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed, _, _ = _seed_files(tmp_path)
    objects = tmp_path / "objects.jsonl"
    objects.write_text(
        json.dumps({"key": "users/ada", "value": {**OBJECT, "raw": {"$base64": b64(b"\x00")}}})
        + "\n"
        + json.dumps({"key": "n", "value": 7})
        + "\n"
    )
    m, b = str(tmp_path / "m"), str(tmp_path / "b")
    assert (
        invoke(monkeypatch, "import", m, "-f", str(objects), "--values", "msgpack").ok().text
        == "imported 2 keys at version 1\n"
    )
    assert _python_get(m, "users/ada", "msgpack") == {**OBJECT, "raw": b"\x00"}
    invoke(monkeypatch, "import", b, "-f", str(seed)).ok()
    assert _python_get(b, "users/1", "bytes") == b"one"
    with pytest.raises(kvstore.CodecMismatchError):
        _python_get(b, "users/1", "msgpack")

    # An export is in its store's codec: a copy made with the same --values is equal.
    exported = invoke(monkeypatch, "export", m).ok().out
    invoke(monkeypatch, "import", str(tmp_path / "without"), stdin=exported).one_line_error(
        1, "line 1: the value must be base64 text (or use --values msgpack)"
    )
    invoke(monkeypatch, "import", str(tmp_path / "m2"), "--values", "msgpack", stdin=exported).ok()
    assert invoke(monkeypatch, "export", str(tmp_path / "m2")).ok().out == exported


def test_every_command_prints_only_json_with_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --json, stdout parses as one JSON document (JSON Lines for export and watch), so no
    command prints past its Output. The calls must name every command: a new one is checked too."""
    url = str(tmp_path / "s")
    seed, _, _ = _seed_files(tmp_path)
    calls = {
        "init": ["init", url],
        "import": ["import", url, "-f", str(seed)],
        "put": ["put", url, "k", "v"],
        "get": ["get", url, "k"],
        "get-many": ["get-many", url, "k", "users/1"],
        "delete": ["delete", url, "users/1"],
        "scan": ["scan", url],
        "history": ["history", url],
        "info": ["info", url],
        "tag create": ["tag", "create", url, "t"],
        "tag list": ["tag", "list", url],
        "tag delete": ["tag", "delete", url, "t"],
        "compact": ["compact", url, "--full"],
        "gc": ["gc", url, "--dry-run"],
        "verify": ["verify", url],
        "export": ["export", url],
        "watch": ["watch", url, "--since", "0", "--count", "2"],
        "doctor": ["doctor", str(tmp_path / "d")],
        "add": ["add", url, "n", "1"],
        "max": ["max", url, "n", "5"],
        "min": ["min", url, "n", "2"],
        "split": ["split", url, "m"],  # late: on a partitioned store, watch --since is refused
        "merge-partitions": ["merge-partitions", url, "m"],
    }
    commands = {name for name in _cli.cli.commands if name != "tag"} | {f"tag {n}" for n in _cli.tag.commands}
    assert set(calls) == commands
    for name, args in calls.items():
        out = invoke(monkeypatch, *args, "--json").ok().text
        if name in ("export", "watch"):
            docs = [json.loads(line) for line in out.splitlines()]
            assert len(docs) == (4 if name == "export" else 2), out
        else:
            json.loads(out)


def _markdown_blocks(path: Path, section: str, language: str) -> list[str]:
    """The ```language blocks of one "## section" of a Markdown file."""
    text = path.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_getting_started_runs_as_written(tmp_path: Path) -> None:
    """docs/getting-started.md: the first store, from the shell and then from Python, in a fresh directory."""
    guide = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"
    (shell,) = _markdown_blocks(guide, "A first store, from the shell", "sh")
    python = _markdown_blocks(guide, "A first store, from Python", "python")
    env = {**_env({}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run_in(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )

    done = run_in(["bash", "-euo", "pipefail", "-c", shell])
    assert done.returncode == 0 and '"hello"\n' in done.stdout, done
    outputs = []
    for block in python:  # each in a fresh interpreter, as pasted into one
        done = run_in([sys.executable, "-c", block])
        assert done.returncode == 0, done
        outputs.append(done.stdout)
    assert "{'name': 'Ada'}" in outputs[0], outputs


# ----------------------------------------------------------------- traps a new user met (issue 16)


def test_memory_urls_are_refused_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A memory store lives in one process: `init` used to report a store the next command could not find."""
    for args in (("init", "memory://foo"), ("put", "memory://foo", "a", "b"), ("scan", "MEMORY://foo")):
        invoke(monkeypatch, *args).one_line_error(
            2, "is a memory store, which lives only inside one process", "use a local directory"
        )


def test_the_exit_codes_in_troubleshooting_are_the_cli_ones() -> None:
    """Every error row of docs/troubleshooting.md gives the exit code the command line uses for it,
    and every public kvstore error has a row."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+Error)`[^|]*\|.*\| (\d+) \|$", doc, re.MULTILINE))
    errors = {
        name: cls
        for name in kvstore.__all__
        if isinstance(cls := getattr(kvstore, name), type) and issubclass(cls, kvstore.KvStoreError)
    }
    assert set(rows) == set(errors) - {"KvStoreError"}, set(rows) ^ (set(errors) - {"KvStoreError"})
    # __new__ only: _exit_code looks at the class, and some constructors want keyword arguments.
    codes = {name: _cli._exit_code(cls.__new__(cls)) for name, cls in errors.items()}
    assert {name: int(code) for name, code in rows.items()} == {name: codes[name] for name in rows}


def _bad_base64(tmp_path: Path, good_lines: int) -> Path:
    path = tmp_path / "m.jsonl"
    lines = [json.dumps({"key": f"k{i}", "value": b64(b"v")}) for i in range(good_lines)]
    path.write_text("\n".join([*lines, json.dumps({"key": "bad", "value": "hello"})]) + "\n")
    return path


def test_a_failed_import_leaves_no_store_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store `import` would create is created only once its input is known to load."""
    monkeypatch.chdir(tmp_path)
    for good_lines in (0, 3):
        invoke(monkeypatch, "import", "./new", "-f", str(_bad_base64(tmp_path, good_lines))).one_line_error(
            1, f"line {good_lines + 1}: the value is not valid base64", "no store was created at ./new"
        )
        assert not (tmp_path / "new").exists()
    stdin = _bad_base64(tmp_path, 2).read_bytes()
    invoke(monkeypatch, "import", "./new", stdin=stdin).one_line_error(1, "line 3: the value is not valid base64")
    long_key = json.dumps({"key": "k" * 5000, "value": b64(b"v")}) + "\n"
    invoke(monkeypatch, "import", "./new", stdin=long_key.encode()).one_line_error(2, "line 1: a key is 1 to 4096")
    invoke(
        monkeypatch, "import", "./new", "--values", "msgpack", stdin=b'{"key": "a", "value": {"$base64": "!"}}\n'
    ).one_line_error(1, "line 1: cannot encode the value as msgpack")
    assert not (tmp_path / "new").exists()
    # Once checked, stdin loads from its copy; an existing store is imported into in one pass.
    good = "".join(json.dumps({"key": f"k{i}", "value": b64(b"v")}) + "\n" for i in range(3)).encode()
    assert invoke(monkeypatch, "import", "./new", stdin=good).ok().text == "imported 3 keys at version 1\n"
    invoke(monkeypatch, "import", "./new", stdin=stdin).one_line_error(1, "line 3")
    assert invoke(monkeypatch, "info", "./new", "--json").json()["version"] == 1


def test_a_failed_import_leaves_no_store_on_s3(
    s3_bucket: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint_url, bucket = s3_bucket
    url = f"s3://{bucket}/import-{os.getpid()}-{time.monotonic_ns()}"
    e = ("--endpoint-url", endpoint_url)
    invoke(monkeypatch, *e, "import", url, "-f", str(_bad_base64(tmp_path, 2))).one_line_error(1, "line 3")
    invoke(monkeypatch, *e, "info", url).one_line_error(3, "no kvstore at")


def test_init_refuses_a_directory_of_other_files_unless_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("mine")
    for url in ("./dir", f"file://{tmp_path}/dir"):
        invoke(monkeypatch, "init", url).one_line_error(
            2, f"{tmp_path}/dir is not empty (1 entry: notes.txt) and holds no kvstore", "pass --force"
        )
    invoke(monkeypatch, "import", "./dir", stdin=b'{"key": "a", "value": "eA=="}\n').one_line_error(
        2, "is not empty", "`kvstore init URL --force`"
    )
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["notes.txt"]
    assert invoke(monkeypatch, "init", "./dir", "--force").ok().text.startswith("created store")
    assert invoke(monkeypatch, "init", "./dir").ok().text.startswith("found existing store")  # a store now
    (tmp_path / "empty").mkdir()
    assert invoke(monkeypatch, "init", "./empty").ok().text.startswith("created store")


def test_json_errors_are_json_on_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --json, a failing command prints one JSON document on stdout naming the error and the
    exit code, and its one line on stderr as always."""
    monkeypatch.chdir(tmp_path)
    invoke(monkeypatch, "init", "s1").ok()
    cases = [
        (("--json", "get", "./s1", "missing"), 3, "KeyNotFound", "key 'missing' not found"),
        (("get", "./s1", "missing", "--json"), 3, "KeyNotFound", "key 'missing' not found"),
        (("--json", "get", "./nostore", "k"), 3, "StoreNotFoundError", "no kvstore at"),
        (("--json", "get", "./s1", "k", "--version", "9"), 2, "FutureVersionError", "does not exist yet"),
        (("--json", "get", "./s1", "k", "--values", "msgpack"), 2, "CodecMismatchError", "use --values bytes"),
        (("--json", "get", "./s1"), 2, "UsageError", "missing KEY"),
        (("--json", "init", "memory://x"), 2, "InvalidURLError", "memory store"),
    ]
    for args, rc, name, words in cases:
        done = invoke(monkeypatch, *args)
        assert done.rc == rc, done.describe()
        doc = json.loads(done.out)
        assert doc == {"error": {"name": name, "message": doc["error"]["message"], "exit_code": rc}}, doc
        assert words in doc["error"]["message"] and words in done.err, done.describe()
    invoke(monkeypatch, "get", "./s1", "missing").one_line_error(3, "not found")
    assert invoke(monkeypatch, "get", "./s1", "missing").out == b""  # without --json, stdout stays empty


def test_put_of_bare_text_in_a_msgpack_store_shows_it_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    invoke(monkeypatch, "init", "./m", "--values", "msgpack").ok()
    invoke(monkeypatch, "put", "./m", "greeting", "hello").one_line_error(
        2, "values are given as JSON text", """a string is quoted, as in '"hello"'"""
    )
    invoke(monkeypatch, "put", "./m", "greeting", '"hello"').ok()
    assert invoke(monkeypatch, "get", "./m", "greeting").ok().text == '"hello"\n'


def test_commands_and_python_agree_on_a_msgpack_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python opening the store without values= writes msgpack, which get and scan show as JSON;
    what the commands write, Python reads back as objects."""
    monkeypatch.chdir(tmp_path)
    invoke(monkeypatch, "init", "./m", "--values", "msgpack").ok()
    invoke(monkeypatch, "put", "./m", "doc", '{"a": [1, 2]}').ok()
    with kvstore.open_sync("./m") as db:
        assert db["doc"] == {"a": [1, 2]}
        db["user2"] = b"hello"
    assert invoke(monkeypatch, "get", "./m", "user2").ok().text == '{"$base64": "aGVsbG8="}\n'
    assert invoke(monkeypatch, "scan", "./m", "--json").json() == [
        {"key": "doc", "value": {"a": [1, 2]}},
        {"key": "user2", "value": {"$base64": "aGVsbG8="}},
    ]


def test_add_max_min_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    invoke(monkeypatch, "init", "./m", "--values", "msgpack").ok()
    assert invoke(monkeypatch, "add", "./m", "hits", "5").ok().text == "add 5 to hits at version 1\n"
    invoke(monkeypatch, "add", "./m", "hits", "--", "-2").ok()
    assert invoke(monkeypatch, "get", "./m", "hits").ok().text == "3\n"
    assert invoke(monkeypatch, "max", "./m", "hits", "10", "--json").json() == {
        "key": "hits",
        "version": 3,
        "op": "max",
        "operand": 10,
    }
    invoke(monkeypatch, "min", "./m", "hits", "7").ok()
    assert invoke(monkeypatch, "get", "./m", "hits").ok().text == "7\n"
    invoke(monkeypatch, "add", "./m", "hits", "x").one_line_error(2, "add takes an integer N, not 'x'")
    invoke(monkeypatch, "add", "./m", "hits", str(2**63)).one_line_error(2, "signed 64-bit int")
    invoke(monkeypatch, "put", "./m", "name", '"ada"').ok()
    invoke(monkeypatch, "add", "./m", "name", "1").ok()  # blind: accepted
    invoke(monkeypatch, "get", "./m", "name").one_line_error(1, "not a msgpack int", "put an integer to the key")
    invoke(monkeypatch, "init", "./b").ok()
    invoke(monkeypatch, "add", "./b", "n", "258").ok()
    assert invoke(monkeypatch, "get", "./b", "n", "--json").json()["value"] == b64((258).to_bytes(8, "little"))


def test_put_with_a_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    now = [1_800_000_000.0]
    monkeypatch.setattr(_ttl, "clock", lambda: now[0])
    invoke(monkeypatch, "init", "./s").ok()
    done = invoke(monkeypatch, "put", "./s", "session", "token", "--ttl", "60").ok()
    assert done.text == "put session (5 bytes) at version 1, expires in 60 s\n"
    assert invoke(monkeypatch, "get", "./s", "session").ok().text == "token"
    now[0] += 60
    invoke(monkeypatch, "get", "./s", "session").one_line_error(3, "not found")
    invoke(monkeypatch, "put", "./s", "k", "v", "--ttl", "0").one_line_error(2, "ttl must be")


def test_split_adds_a_partition_and_info_lists_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "s")
    invoke(monkeypatch, "init", url).ok()
    invoke(monkeypatch, "put", url, "apple", "1").ok()
    invoke(monkeypatch, "put", url, "pear", "2").ok()
    assert [p["start"] for p in invoke(monkeypatch, "split", url, "m", "--json").json()] == [
        {"key": ""},
        {"key": "m"},
    ]
    info = invoke(monkeypatch, "info", url).ok().text
    assert "partitions" in info and "[(start), m) version 1" in info and "[m, (end)) version 1" in info
    doc = invoke(monkeypatch, "info", url, "--json").json()
    assert [(p["start"], p["end"], p["version"]) for p in doc["partitions"]] == [
        ({"key": ""}, {"key": "m"}, 1),
        ({"key": "m"}, None, 1),
    ]
    assert doc["keys"]["count"] == 2
    assert invoke(monkeypatch, "get", url, "pear").ok().text == "2"
