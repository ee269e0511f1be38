"""The `kvstore` command line: a thin layer over the public async API.

Every command that works on a store is an async function under
`store_command`, which gives it the shared skeleton: the store URL (its
first argument, or ``KVSTORE_URL``), a `Session` that opens the store
read-only or for writing with the value codec to use (the store's own unless
``--values`` names one) and runs the compaction a commit made due, one
``asyncio.run``, and kvstore errors as one line and an exit code. Results go
to the session's `Output`, which prints aligned text for people or JSON
(``--json``) for scripts: no command looks at ``--json`` itself. ``export``
and ``watch`` stream JSON Lines.

Errors are one line on stderr: the kvstore exception's message, its Python
advice rewritten in command-line words (`cli_message`); ``--debug`` adds the
traceback. Exit codes are listed in ``EXIT_CODES`` and in the ``--help``
epilog.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import inspect
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from datetime import datetime, timezone
from typing import IO, Any, ClassVar, Literal, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import click
import msgpack

import kvstore

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_DAMAGED = 5
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "a kvstore error (the message says what to do); doctor: a property failed; "
    "also when the output pipe closes",
    EXIT_USAGE: "usage error: a missing or bad argument or option, or a key, value or URL kvstore refuses",
    EXIT_NOT_FOUND: "not found: missing key (get, get-many, delete), store, bucket or tag",
    EXIT_CONFLICT: "conflict: a concurrent commit won (retry), or the tag name is taken",
    EXIT_DAMAGED: "damage: verify found damaged objects, or a read hit a corrupt one",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); watch exits 0 instead",
}

URL_ENV = "KVSTORE_URL"
_BYTES_MARK = "$base64"  # how bytes inside msgpack values appear in JSON

_EPILOG = (
    "\b\nThe store URL is the first argument of every command (s3://bucket/prefix,\n"
    f"file:///path or a plain path); when it is left out, {URL_ENV} is used. A first\n"
    "argument that looks like a URL or a path (://, /, ./, ../, ~, a store's directory)\n"
    "is never taken as a key: a missing argument is then a usage error.\n"
    "S3 endpoint and credentials come the AWS way: --endpoint-url or\n"
    "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, --profile or AWS_PROFILE,\n"
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, instance roles.\n"
    "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())
)


class CliError(Exception):
    """An error of the command line itself (bad input file, missing key), with its exit code.

    `name` is what ``--json`` reports as the error's name: the kvstore
    exception's when one caused it (see `_error_name`), else this one's.
    """

    def __init__(self, message: str, exit_code: int = EXIT_ERROR, *, name: str = "CliError") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.name = name


@dataclasses.dataclass
class State:
    """Settings shared by the group and its subcommands (set at either level)."""

    json: bool = False
    debug: bool = False
    progress: bool | None = None  # None: only when stderr is a terminal
    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    sse_customer_key_file: str | None = None

    def s3_options(self) -> kvstore.S3Options | None:
        """Encryption settings for S3, or None when none were given."""
        if not (self.sse or self.sse_kms_key_id or self.sse_customer_key_file):
            return None
        key = None
        if self.sse_customer_key_file:
            try:
                with open(self.sse_customer_key_file, "rb") as f:
                    key = f.read()
            except OSError as exc:
                raise CliError(f"cannot read the SSE-C key file: {exc}") from exc
            if len(key) != 32:
                raise CliError(f"an SSE-C key is 32 raw bytes; {self.sse_customer_key_file} has {len(key)}")
        return kvstore.S3Options(sse=self.sse, sse_kms_key_id=self.sse_kms_key_id, sse_customer_key=key)

    def show_progress(self) -> bool:
        """Whether to draw progress bars (on stderr)."""
        if self.progress is not None:
            return self.progress
        return sys.stderr.isatty()


def _state() -> State:
    ctx = click.get_current_context()
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = ctx.find_root().obj = State()
    return obj


# ----------------------------------------------------------------- common options
# Accepted before the subcommand (with environment defaults) and after it
# (overriding), like the AWS CLI's global options.

F = TypeVar("F", bound=Callable[..., Any])


def _setter(field_name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback storing an option's value in the shared State, if the user gave it."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        source = ctx.get_parameter_source(param.name or "")
        given = source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
        if given and value is not None and value != "":
            setattr(_state(), field_name, value)

    return callback


def _common_options(group_level: bool) -> Callable[[F], F]:
    def env(*names: str) -> list[str] | None:
        return list(names) if group_level else None

    options = [
        click.option(
            "--json",
            "json_",
            is_flag=True,
            expose_value=False,
            callback=_setter("json"),
            help="Print JSON for scripts (one document; JSON Lines for export and watch).",
        ),
        click.option(
            "--debug",
            is_flag=True,
            expose_value=False,
            callback=_setter("debug"),
            help="Show tracebacks and kvstore's debug log.",
        ),
        click.option(
            "--progress/--no-progress",
            default=None,
            expose_value=False,
            callback=_setter("progress"),
            help="Draw progress bars on stderr (default: when stderr is a terminal).",
        ),
        click.option(
            "--endpoint-url",
            metavar="URL",
            envvar=env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            expose_value=False,
            callback=_setter("endpoint_url"),
            help="S3-compatible endpoint [env: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL].",
        ),
        click.option(
            "--profile",
            metavar="NAME",
            envvar=env("AWS_PROFILE"),
            expose_value=False,
            callback=_setter("profile"),
            help="AWS shared-config profile [env: AWS_PROFILE].",
        ),
        click.option(
            "--region",
            metavar="NAME",
            envvar=env("AWS_REGION", "AWS_DEFAULT_REGION"),
            expose_value=False,
            callback=_setter("region"),
            help="AWS region [env: AWS_REGION, AWS_DEFAULT_REGION].",
        ),
        click.option(
            "--sse",
            type=click.Choice(["AES256", "aws:kms"]),
            expose_value=False,
            callback=_setter("sse"),
            help="Server-side encryption for new objects (SSE-S3 or SSE-KMS).",
        ),
        click.option(
            "--sse-kms-key-id",
            metavar="KEY",
            expose_value=False,
            callback=_setter("sse_kms_key_id"),
            help="KMS key for --sse aws:kms.",
        ),
        click.option(
            "--sse-customer-key-file",
            metavar="PATH",
            expose_value=False,
            callback=_setter("sse_customer_key_file"),
            help="File holding a 32-byte SSE-C key, sent with every request.",
        ),
    ]

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


class _Group(click.Group):
    """A group that knows command aliases (``ls`` for ``scan``)."""

    aliases: ClassVar[dict[str, str]] = {"ls": "scan"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd is not None else name), cmd, rest


@click.group(cls=_Group, epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kvstore.__version__, prog_name="kvstore")
@_common_options(group_level=True)
def cli() -> None:
    """kvstore: a transactional, ordered key-value store on an S3 bucket.

    \b
    Examples:
      kvstore init ./data
      kvstore put ./data greeting hello
      kvstore get ./data greeting
      kvstore scan s3://bucket/prefix --prefix users/ --json
      KVSTORE_URL=s3://bucket/prefix kvstore export -o backup.jsonl
    """


# ----------------------------------------------------------------- the store URL


def _looks_like_url(arg: str) -> bool:
    """Whether a first argument names a store rather than a key (see docs/cli.md, "The store URL").

    URLs (``://``), absolute, home and explicitly relative paths (``/``, ``~``,
    ``./``, ``../``), and existing directories holding a local store are store
    URLs. Such an argument is never silently taken as a key: with
    ``KVSTORE_URL`` set, ``kvstore put ./s2 greeting`` would otherwise write
    the key ``./s2`` into the wrong store.
    """
    if "://" in arg or arg.startswith(("/", "./", "../", "~")) or arg in (".", ".."):
        return True
    return any(os.path.isfile(os.path.join(arg, name)) for name in ("manifest", "partitions"))


def _split_args(args: Sequence[str], names: Sequence[str]) -> tuple[str, list[str]]:
    """Split ``[URL] NAMES...``: the URL is there when one more argument than NAMES was given.

    With exactly as many arguments as NAMES, the URL comes from KVSTORE_URL,
    unless the first argument looks like a store URL: then an argument is
    missing (a usage error, exit 2), not a key to write into another store.
    """
    command = click.get_current_context().command_path
    spelled = " ".join(["[URL]", *names])
    if len(args) == len(names) + 1:
        return args[0], list(args[1:])
    if len(args) > len(names) + 1:
        quote = " (quote a VALUE that has spaces)" if names and names[-1] == "VALUE" else ""
        raise click.UsageError(f"too many arguments: expected {command} {spelled}, got {len(args)}{quote}")
    if args and _looks_like_url(args[0]):
        missing = " ".join(names[len(args) - 1 :])
        raise click.UsageError(
            f"missing {missing}: {args[0]!r} is taken as the store URL, not as {names[0]} "
            f"(expected {command} {spelled})"
        )
    if len(args) < len(names):
        raise click.UsageError(f"missing {' '.join(names[len(args) :])}: expected {command} {spelled}")
    url = os.environ.get(URL_ENV)
    if not url:
        raise click.UsageError(
            f"no store URL: expected {command} {spelled}, and {URL_ENV} is not set "
            f"(give the URL first, or export {URL_ENV}=URL)"
        )
    return url, list(args)


def _split_url_and_keys(args: Sequence[str], names: Sequence[str]) -> tuple[str, list[str]]:
    """Split ``[URL] KEY...``, where counting cannot tell: the first argument is the URL
    when it looks like one (`_looks_like_url`) or KVSTORE_URL is not set; otherwise every
    argument is a key and the URL comes from KVSTORE_URL."""
    command = click.get_current_context().command_path
    spelled = " ".join(["[URL]", *names])
    from_env = os.environ.get(URL_ENV)
    if args and (_looks_like_url(args[0]) or not from_env):
        url, keys = args[0], list(args[1:])
    elif from_env:
        url, keys = from_env, list(args)
    else:
        raise click.UsageError(
            f"no store URL: expected {command} {spelled}, and {URL_ENV} is not set "
            f"(give the URL first, or export {URL_ENV}=URL)"
        )
    if not keys:
        raise click.UsageError(f"missing KEY: expected {command} {spelled}")
    return url, keys


def _refuse_memory_url(url: str) -> None:
    """A memory:// store lives in the memory of one process: each command is a process of its
    own, so `init` would make a store that is gone when it exits and the next command finds none."""
    if url.lower().startswith("memory:"):
        raise CliError(
            f"{url} is a memory store, which lives only inside one process and is gone when it exits, "
            "so every kvstore command would see a new, empty store; use a local directory "
            "(e.g. ./data) or s3://bucket/prefix (memory:// is for tests through the Python API)",
            EXIT_USAGE,
            name="InvalidURLError",
        )


def _local_dir(url: str) -> str | None:
    """The directory of a local store URL (a plain path or file://), None for other schemes."""
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    parts = urlsplit(url)
    return unquote(parts.path) if parts.scheme.lower() == "file" else None


def _refuse_foreign_dir(url: str, advice: str) -> None:
    """Refuse to create a local store in a directory that already holds other files.

    A store's objects would be mixed with them, and `kvstore init` would seem
    to take the directory over (a mistyped path, the wrong working directory).
    `advice` says how to go on anyway. Nothing to check for S3: a prefix with
    objects but no manifest is as likely a store being made by another host.
    """
    path = _local_dir(url)
    if (
        path is None
        or not os.path.isdir(path)
        or any(os.path.exists(os.path.join(path, n)) for n in ("manifest", "partitions"))
    ):
        return
    entries = sorted(os.listdir(path))
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise CliError(
            f"{path} is not empty ({len(entries)} {'entry' if len(entries) == 1 else 'entries'}: {shown}) "
            "and holds no kvstore, so a store "
            f"made there would mix its objects with these files; use a new or empty directory, or {advice}",
            EXIT_USAGE,
        )


# ----------------------------------------------------------------- output


def _aligned(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> list[str]:
    """Rows as lines of left-aligned columns (the last column is not padded)."""
    all_rows = ([list(header)] if header else []) + [list(r) for r in rows]
    if not all_rows:
        return []
    widths = [max(len(r[i]) for r in all_rows if i < len(r)) for i in range(max(len(r) for r in all_rows))]
    return ["  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)).rstrip() for r in all_rows]


class Output:
    """Where a command's results go: text for people, or JSON for scripts (``--json``).

    Each method takes a result in both forms, and only this class looks at
    ``--json``: so with it stdout holds exactly one JSON document per command
    (`result`, `value`, `rows`), or one per line (`event`), and no text slips
    in. `note` is for people in both modes, on stderr.
    """

    def __init__(self, as_json: bool) -> None:
        self._json = as_json

    def result(self, doc: Any, *lines: str) -> None:
        """The command's result: `doc` as JSON, or `lines` of text (`_aligned` for a table)."""
        for line in [json.dumps(doc, ensure_ascii=False)] if self._json else lines:
            click.echo(line)

    def value(self, doc: Any, raw: bytes) -> None:
        """A value: `doc` as JSON, or its bytes exactly, so ``kvstore get URL k > file`` copies it."""
        if self._json:
            self.result(doc)
            return
        out = sys.stdout.buffer
        out.write(raw)
        if sys.stdout.isatty() and not raw.endswith(b"\n"):
            out.write(b"\n")  # so the prompt starts on its own line; a pipe or file gets the bytes exactly
        out.flush()

    def event(self, doc: Any, *lines: str) -> None:
        """One of an endless stream of results (watch): a JSON line, or text lines; shown at once."""
        self.result(doc, *lines)
        sys.stdout.flush()

    @contextmanager
    def rows(self, to_json: Callable[[T], Any], to_cells: Callable[[T], list[str]]) -> Iterator[Callable[[T], None]]:
        """A list printed as it is read (scan): a JSON array, or a table aligned in pages.

        Yields the function that adds an item; only the form printed is computed.
        """
        if self._json:
            count = [0]

            def add_json(item: T) -> None:
                click.echo(("," if count[0] else "[") + "\n" + json.dumps(to_json(item), ensure_ascii=False), nl=False)
                count[0] += 1

            yield add_json
            click.echo("\n]" if count[0] else "[]")
            return
        page: list[list[str]] = []

        def add_row(item: T) -> None:
            page.append(to_cells(item))
            if len(page) >= TABLE_PAGE_ROWS:  # align in pages, keep memory bounded
                click.echo("\n".join(_aligned(page)))
                page.clear()

        yield add_row
        if page:
            click.echo("\n".join(_aligned(page)))

    @staticmethod
    def note(text: str) -> None:
        """A message for people in both modes, on stderr: summaries, banners, warnings."""
        click.echo(text, err=True)


TABLE_PAGE_ROWS = 1000  # a long listing is aligned (and held in memory) this many rows at a time
TABLE_VALUE_CHARS = 80  # a longer value is cut in tables; `get` and --json print it whole


# ----------------------------------------------------------------- values

Codec = Literal["bytes", "msgpack"]  # a store's value codec (`Store.recorded_values`)
CODEC_WORDS: dict[str, Codec] = {"bytes": "bytes", "base64": "bytes", "msgpack": "msgpack"}  # --values choices


def _key_text(key: bytes) -> str:
    """A key for people: its UTF-8 text, with undecodable bytes and control characters escaped."""
    text = key.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _key_json(key: bytes) -> dict[str, str]:
    """A key for JSON: ``{"key": text}`` when it is UTF-8, else ``{"key_base64": ...}``."""
    try:
        return {"key": key.decode("utf-8")}
    except UnicodeDecodeError:
        return {"key_base64": base64.b64encode(key).decode()}


def _key_from_json(doc: dict[str, Any], where: str) -> bytes:
    if isinstance(doc.get("key"), str) and doc["key"]:
        return str(doc["key"]).encode("utf-8")
    if isinstance(doc.get("key_base64"), str):
        try:
            return base64.b64decode(doc["key_base64"], validate=True)
        except ValueError as exc:
            raise CliError(f"{where}: key_base64 is not valid base64: {exc}") from None
    raise CliError(f'{where}: expected {{"key": "...", "value": ...}} (or "key_base64")')


def jsonable(value: Any, where: str = "value") -> Any:
    """A msgpack-decoded value as JSON: bytes become ``{"$base64": ...}``.

    Raises CliError for what JSON cannot carry faithfully (maps with
    non-string keys, NaN, extension types).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CliError(f"{where}: {value} has no JSON form; use the Python API")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES_MARK: base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CliError(f"{where}: a map key {k!r} is not a string, which JSON cannot carry; use the Python API")
            out[k] = jsonable(v, where)
        return out
    raise CliError(f"{where}: a {type(value).__name__} has no JSON form; use the Python API")


def from_jsonable(value: Any) -> Any:
    """The inverse of `jsonable`: ``{"$base64": ...}`` objects become bytes again."""
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_BYTES_MARK), str):
            return base64.b64decode(value[_BYTES_MARK], validate=True)
        return {k: from_jsonable(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Values:
    """How a command shows and reads values, by the store's codec.

    The command line reads and writes a store's raw bytes (it opens stores
    with ``values="raw"``) and does the codec's work itself, since it must turn
    msgpack values into JSON and back: ``bytes`` values are shown as they are
    (base64 in JSON), ``msgpack`` values as JSON.
    """

    codec: Codec

    def json(self, raw: bytes, key: bytes) -> Any:
        """A stored value for JSON output: base64 text, or the decoded msgpack object."""
        if self.codec == "msgpack":
            return jsonable(self._decode(raw, key), f"the value of {_key_text(key)!r}")
        return base64.b64encode(raw).decode()

    def text(self, raw: bytes, key: bytes) -> str:
        """A stored value for people: UTF-8 text when printable, else an escaped bytes literal; JSON for msgpack."""
        if self.codec == "msgpack":
            return json.dumps(self.json(raw, key), ensure_ascii=False)
        try:
            text = raw.decode("utf-8")
            if text.isprintable():
                return text
        except UnicodeDecodeError:
            pass
        return repr(raw)

    def cell(self, raw: bytes, key: bytes) -> str:
        """A value for a table row: `text`, cut to TABLE_VALUE_CHARS with its full size,
        so one large value cannot push every other row off the screen."""
        text = self.text(raw, key)
        if len(text) <= TABLE_VALUE_CHARS:
            return text
        return f"{text[:TABLE_VALUE_CHARS]}... ({len(raw)} bytes)"

    def encode(self, data: bytes, where: str) -> bytes:
        """Bytes to store from command-line input: as is, or JSON text packed as msgpack."""
        if self.codec != "msgpack":
            return data
        try:
            value = from_jsonable(json.loads(data))
        except ValueError as exc:
            raise CliError(f"{where} is not JSON ({exc}): {_json_advice(data)}", EXIT_USAGE) from None
        return bytes(msgpack.packb(value, use_bin_type=True))

    def from_json(self, value: Any, where: str) -> bytes:
        """Bytes to store from the "value" of an export line: base64 text, or JSON packed as msgpack."""
        if self.codec == "msgpack":
            try:
                return bytes(msgpack.packb(from_jsonable(value), use_bin_type=True))
            except (TypeError, ValueError) as exc:
                raise CliError(f"{where}: cannot encode the value as msgpack: {exc}") from None
        if not isinstance(value, str):
            raise CliError(f"{where}: the value must be base64 text (or use --values msgpack)")
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise CliError(f"{where}: the value is not valid base64 (or use --values msgpack)") from None

    def _decode(self, raw: bytes, key: bytes) -> Any:
        try:
            return msgpack.unpackb(raw, raw=False)
        except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
            raise CliError(
                f"the value of {_key_text(key)!r} is not msgpack ({exc}); "
                "it was written by a program that ignored the store's codec"
            ) from None


def _json_advice(data: bytes) -> str:
    """Why a msgpack store wants JSON, and the given text as the JSON string it may have meant."""
    advice = "this store records values='msgpack', so values are given as JSON text"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return advice + "; store raw bytes in a store of bytes (kvstore init URL)"
    quoted = shlex.quote(json.dumps(text.rstrip("\n"), ensure_ascii=False))
    return f"{advice}: a string is quoted, as in {quoted}"


# ----------------------------------------------------------------- the command skeleton

Mode = Literal["read", "write", "create"]  # read-only; for writing; for writing, creating a missing store

COMPACT_BUDGET = 30.0  # seconds a writing command may spend on a due compaction before it exits


class Session:
    """One command's store: how to open it, the value codec to use, and where results go."""

    def __init__(self, url: str, mode: Mode, values: Codec | None, compacts: bool) -> None:
        self.url = url
        self.out = Output(_state().json)
        self.values = Values(values or "bytes")  # set again by `open`, from the store when values is None
        self._mode = mode
        self.explicit = values  # the codec --values names, None when it was not given
        self._compacts = compacts

    @asynccontextmanager
    async def open(self, mode: Mode | None = None) -> AsyncIterator[kvstore.Store]:
        """Open the store (in the command's mode unless `mode` says otherwise) and set `values`.

        The command works on raw bytes (`Values`), so it opens the store with
        ``values="raw"``. An explicit ``--values`` that the store does not
        record is put to the library's rule in a short open of its own (one
        more manifest GET): a store created now records it, an empty store
        opened for writing adopts it, any other store refuses it. A writing
        command does that first: a raw handle opened before its store adopted
        msgpack encodes for bytes, and its writes would be refused. After a
        commit of a compacting command, the levels it made due are merged.
        """
        mode = mode or self._mode
        if self.explicit is not None and mode != "read":
            await self._check_codec(mode)  # before the raw open (which would create a store of bytes)
        async with self._connect(mode, "raw") as db:
            if self.explicit not in (None, db.recorded_values):
                await self._check_codec(mode)
            self.values = Values(self.explicit or db.recorded_values)
            opened_at = db.version
            yield db
            if self._compacts and db.version != opened_at:
                await _compact_if_due(db)

    async def _check_codec(self, mode: Mode) -> None:
        """Open with ``values=`` the explicit codec: kvstore records, adopts or refuses it."""
        try:
            async with self._connect(mode, self.explicit):
                pass
        except kvstore.CodecMismatchError as exc:
            raise CliError(
                f"{self.url} stores {exc.recorded} values, not {self.explicit}: use --values "
                f"{exc.recorded}, or leave --values out (it defaults to the store's codec)",
                EXIT_USAGE,
            ) from exc

    def _connect(self, mode: Mode, values: Codec | Literal["raw"] | None) -> kvstore.StoreOpener:
        """`kvstore.open` with the shared S3 settings.

        Writers open with auto_compact off: a command exits right after its
        commit, and closing the store would cancel a background compaction (so a
        store written only by commands would never be compacted). Compacting
        commands merge in the foreground instead.
        """
        s = _state()
        return kvstore.open(
            self.url,
            create=mode == "create",
            read_only=mode == "read",
            values=values,
            options=None if mode == "read" else kvstore.StoreOptions(auto_compact=False),
            endpoint_url=s.endpoint_url or None,
            profile=s.profile or None,
            region_name=s.region or None,
            s3_options=s.s3_options(),
        )


async def _compact_if_due(db: kvstore.Store) -> None:
    """After a commit, merge the levels it made due, within COMPACT_BUDGET seconds.

    Costs one conditional GET of the manifest when nothing is due. The commit
    has succeeded whatever happens here, so a failure or an overrun is a
    warning naming the command that finishes the job, not an error: an
    abandoned merge is invisible (its segment is garbage for gc).
    """
    try:
        results = await asyncio.wait_for(db.compact(), COMPACT_BUDGET)
    except asyncio.TimeoutError:
        Output.note(
            f"kvstore: warning: compaction did not finish within {COMPACT_BUDGET:.0f} s; run `kvstore compact {db.url}`"
        )
        return
    except kvstore.KvStoreError as exc:
        Output.note(
            f"kvstore: warning: compaction failed ({cli_message(str(exc), db.url)}); "
            f"run `kvstore compact {db.url}` later"
        )
        return
    for r in results:
        Output.note(f"kvstore: compacted {r.inputs} segments into level {r.level} (version {r.version})")


Body = Callable[..., Coroutine[Any, Any, None]]


def store_command(
    group: click.Group,
    names: str = "",
    *,
    mode: Mode = "read",
    values: Sequence[str] = (),
    compacts: bool = False,
    until_interrupted: bool = False,
    name: str | None = None,
    names_given: Callable[[dict[str, Any]], list[str]] | None = None,
) -> Callable[[Body], click.Command]:
    """Make `body` the command `name` of `group`: ``body(session, *NAMES, **options)``.

    The command takes ``[URL] NAMES`` (`names`, or `names_given` from the
    options when they change them), the body's own click options, ``--values``
    with the choices `values` (``base64`` is another word for ``bytes``) and
    the common options. It runs the body in one ``asyncio.run`` with a
    `Session` opening the store in `mode` (`compacts`: merging what a commit
    made due), and turns kvstore errors into CliError with the exit code of
    their kind. `until_interrupted`: Ctrl-C is how the command ends (exit 0).
    """

    def decorate(body: Body) -> click.Command:
        def callback(args: tuple[str, ...], **options: Any) -> None:
            given_names = names_given(options) if names_given else names.split()
            split = _split_url_and_keys if given_names[-1:] == ["KEY..."] else _split_args
            url, rest = split(args, given_names)
            _refuse_memory_url(url)
            given = options.pop("values", None)
            session = Session(url, mode, None if given is None else CODEC_WORDS[given], compacts)
            try:
                asyncio.run(body(session, *rest, **options))
            except KeyboardInterrupt:
                if not until_interrupted:
                    raise
            except kvstore.KvStoreError as exc:
                raise CliError(cli_message(str(exc) or type(exc).__name__, url), _exit_code(exc)) from exc

        command: Any = _common_options(group_level=False)(callback)
        if values:
            command = click.option(
                "--values",
                type=click.Choice(list(values)),
                default=None,
                help="How values are shown and read (default: the store's codec, set by `init --values`): "
                "bytes as they are (base64 in JSON); msgpack as JSON.",
            )(command)
        command.__click_params__ += getattr(body, "__click_params__", [])
        command = click.argument("args", nargs=-1, metavar=("[URL] " + names).strip())(command)
        return group.command(name or body.__name__, help=inspect.getdoc(body))(command)

    return decorate


def _snapshot_options(f: F) -> F:
    f = click.option("--tag", "tag_name", metavar="NAME", help="Read the version retained under this tag.")(f)
    f = click.option("--version", "at_version", type=int, metavar="N", help="Read store version N (a past one).")(f)
    return f


# ----------------------------------------------------------------- for people


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_minute(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@contextmanager
def _bar(
    label: str,
    length: int | None = None,
    item: Callable[[Any], str | None] | None = None,
    count: bool = False,
) -> Iterator[Any]:
    """A click progress bar on stderr (pulsing when `length` is unknown; `count`
    shows the position), or None when progress is off."""
    if not _state().show_progress():
        yield None
        return

    def forever() -> Iterator[int]:  # an iterable without a length: a pulsing bar
        while True:
            yield 0

    kwargs: dict[str, Any] = {"label": label, "file": sys.stderr, "item_show_func": item}
    if length is None:
        kwargs["iterable"] = forever()
        kwargs["show_pos"] = count
        kwargs["update_min_steps"] = 64 if count else 1
    else:
        kwargs["length"] = length
    with click.progressbar(**kwargs) as bar:
        yield bar


async def _with_pulse(label: str, work: Awaitable[T]) -> T:
    """Await `work` while a pulsing progress bar shows the time spent (the API reports no steps)."""
    started = time.monotonic()
    with _bar(label, item=lambda _: f"{time.monotonic() - started:.1f}s") as bar:
        if bar is None:
            return await work
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait([task], timeout=0.1)
            bar.update(1)
            if done:
                bar.finished = True
                return task.result()


# ----------------------------------------------------------------- commands

VALUE_CHOICES = ("bytes", "msgpack")
FILE_VALUE_CHOICES = ("bytes", "base64", "msgpack")  # export and import: base64 says how bytes look in the file


@store_command(cli, values=VALUE_CHOICES)
@click.option("--force", is_flag=True, help="Create the store in a local directory that holds other files.")
async def init(s: Session, *, force: bool) -> None:
    """Create a store (an existing one is left as it is).

    --values records how the store's values are encoded (default: bytes);
    every command then shows and reads them that way. A local directory
    that holds other files but no store is refused, unless --force.
    """
    try:
        async with s.open("read") as db:
            created = False
    except kvstore.StoreNotFoundError:
        if not force:
            _refuse_foreign_dir(s.url, "pass --force to create the store there anyway")
        async with s.open("create") as db:
            created = True
    s.out.result(
        {"url": db.url, "created": created, "version": db.version},
        f"{'created' if created else 'found existing'} store {db.url} at version {db.version}",
    )


@store_command(cli)
@click.option(
    "--count-limit",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="Count keys up to this many (0: count all; counting reads the data).",
)
async def info(s: Session, *, count_limit: int) -> None:
    """Show the store's version, segments, keys and settings."""
    async with s.open() as db:
        described = await db.describe()
        partitions = await db.partitions()
        history = await db.history()
        tags = await db.tags()
        counted = 0
        async for _ in db.scan(limit=count_limit + 1 if count_limit else None):
            counted += 1
        keys: dict[str, Any] = {
            "count": min(counted, count_limit) if count_limit else counted,
            "exact": not count_limit or counted <= count_limit,
            "stored_entries": described.entries,
        }
        doc = {
            "url": db.url,
            "store_id": described.store_id,
            "values": db.recorded_values,
            "version": described.version,
            "oldest_readable_version": described.oldest_readable_version,
            "segments": described.segments,
            "sorted_runs": described.sorted_runs,
            "segments_per_level": described.segments_per_level,
            "bytes": described.segment_bytes,
            "keys": keys,
            "commits_in_log": len(history),
            "last_commit": history[0].time if history else None,
            "tags": len(tags),
            # Levels holding a full fanout of segments: what `kvstore compact` would merge.
            "compaction_due": sorted(
                level for level, n in described.segments_per_level.items() if n >= db.options.compaction_fanout
            ),
            "last_compaction_write_amplification": described.last_compaction_write_amplification,
            "partitions": [_partition_json(p) for p in partitions],
            "options": dataclasses.asdict(db.options),
            "requests": db.statistics()["requests"],
        }
    rows = [
        ["url", doc["url"]],
        ["store id", doc["store_id"]],
        ["values", doc["values"]],
        ["version", str(doc["version"])],
        ["oldest readable version", str(doc["oldest_readable_version"])],
        [
            "segments",
            f"{doc['segments']}, {doc['sorted_runs']} sorted runs (sources per level: {doc['segments_per_level']})",
        ],
        ["bytes", _size(doc["bytes"])],
        [
            "keys",
            f"{keys['count']}" if keys["exact"] else f"more than {keys['count']} (at most {keys['stored_entries']})",
        ],
        ["commits in log", str(doc["commits_in_log"])],
        ["last commit", _time(doc["last_commit"]) if doc["last_commit"] else "-"],
        ["tags", str(doc["tags"])],
        ["compaction", _compaction_state(doc)],
        ["write amplification", _write_amplification(doc)],
        ["partitions", str(len(partitions))],
    ]
    if len(partitions) > 1:
        rows += [[f"partition {p.id}", _partition_text(p)] for p in partitions]
    rows += [[f"option {name}", json.dumps(value)] for name, value in doc["options"].items()]
    s.out.result(doc, *_aligned(rows))


def _partition_json(p: kvstore.PartitionInfo) -> dict[str, Any]:
    return {
        "id": p.id,
        "start": _key_json(p.start),
        "end": None if p.end is None else _key_json(p.end),
        "version": p.version,
        "commit_rate": p.commit_rate,
    }


def _partition_text(p: kvstore.PartitionInfo) -> str:
    end = "(end)" if p.end is None else _key_text(p.end)
    start = "(start)" if not p.start else _key_text(p.start)
    return f"[{start}, {end}) version {p.version}, {p.commit_rate:.2f} commits/s over the last minute"


def _write_amplification(doc: dict[str, Any]) -> str:
    wa = doc["last_compaction_write_amplification"]
    return "-" if wa is None else f"{wa:.3f} (last compaction: bytes written / bytes of its output run)"


def _compaction_state(doc: dict[str, Any]) -> str:
    due = doc["compaction_due"]
    if not due:
        return "not due"
    levels = ", ".join(f"level {level} holds {doc['segments_per_level'][level]} sources" for level in due)
    return f"due: {levels} (fanout {doc['options']['compaction_fanout']}); run `kvstore compact {doc['url']}`"


@store_command(cli, "KEY", values=VALUE_CHOICES)
@_snapshot_options
async def get(s: Session, key: str, *, at_version: int | None, tag_name: str | None) -> None:
    """Print the value of KEY (raw bytes; JSON with --json or for msgpack values).

    Exits 3 if the key is absent.
    """
    missing = object()
    async with s.open() as db:
        snap = await db.snapshot(version=at_version, tag=tag_name)
        raw = await snap.get(key, missing)
    if raw is missing:
        raise CliError(f"key {key!r} not found at version {snap.version}", EXIT_NOT_FOUND, name="KeyNotFound")
    kb = key.encode()
    doc = {**_key_json(kb), "value": s.values.json(raw, kb), "version": snap.version}
    if s.values.codec == "msgpack":
        s.out.result(doc, s.values.text(raw, kb))
    else:
        s.out.value(doc, raw)


@store_command(cli, "KEY...", values=VALUE_CHOICES, name="get-many")
@_snapshot_options
@click.option("--missing-ok", is_flag=True, help="Exit 0 when a KEY is absent (it is shown as absent either way).")
async def get_many(s: Session, *keys: str, at_version: int | None, tag_name: str | None, missing_ok: bool) -> None:
    """Print the values of the KEYs, read together (one table row, or JSON item, per KEY).

    Exits 3 if any KEY is absent (0 with --missing-ok); the output marks which.
    """
    missing = object()
    async with s.open() as db:
        snap = await db.snapshot(version=at_version, tag=tag_name)
        raws = await snap.get_many(keys, missing)
    encoded = [key.encode() for key in keys]
    found = [(kb, raw) for kb, raw in zip(encoded, raws, strict=True)]
    items = [
        {**_key_json(kb), "found": False, "value": None}
        if raw is missing
        else {**_key_json(kb), "found": True, "value": s.values.json(raw, kb)}
        for kb, raw in found
    ]
    rows = [[_key_text(kb), "(absent)" if raw is missing else s.values.cell(raw, kb)] for kb, raw in found]
    s.out.result({"version": snap.version, "values": items}, *_aligned(rows))
    absent = [key for key, raw in zip(keys, raws, strict=True) if raw is missing]
    if absent and not missing_ok:
        names = ", ".join(repr(key) for key in dict.fromkeys(absent))
        s.out.note(f"kvstore: {len(absent)} of {len(keys)} keys not found at version {snap.version}: {names}")
        raise click.exceptions.Exit(EXIT_NOT_FOUND)


def _value_input(path: str) -> bytes:
    """The bytes of a file, or of stdin for '-' (read before the store is opened, so a bad path fails first)."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read the value: {exc}") from None


@store_command(
    cli,
    "KEY [VALUE|-]",
    mode="write",
    values=VALUE_CHOICES,
    compacts=True,
    names_given=lambda options: ["KEY"] if options["file_"] is not None else ["KEY", "VALUE"],
)
@click.option(
    "--file",
    "file_",
    type=click.Path(dir_okay=False, allow_dash=True),
    metavar="PATH",
    help="Read the value from this file ('-' for stdin) instead of an argument.",
)
@click.option("--ttl", type=float, metavar="SECONDS", help="The value expires this many seconds from now.")
async def put(s: Session, key: str, value: str | None = None, *, file_: str | None, ttl: float | None = None) -> None:
    """Set KEY to VALUE, to the bytes of --file, or to stdin ('-').

    In a store of msgpack values the value is JSON text, stored msgpack-encoded.
    With --ttl the value expires: reads then find KEY absent.
    """
    data = _value_input(file_) if file_ is not None else _value_input(value) if value == "-" else str(value).encode()
    async with s.open() as db:
        stored = s.values.encode(data, "the value")
        version = await db.put(key, stored, ttl=ttl)
    expiry = {} if ttl is None else {"ttl": ttl}
    s.out.result(
        {**_key_json(key.encode()), "version": version, "bytes": len(stored), **expiry},
        f"put {key} ({len(stored)} bytes) at version {version}" + ("" if ttl is None else f", expires in {ttl:g} s"),
    )


@store_command(
    cli,
    "KEY",
    mode="write",
    compacts=True,
    names_given=lambda options: [] if options["prefix"] is not None or options["range_"] is not None else ["KEY"],
)
@click.option("--missing-ok", is_flag=True, help="Exit 0 when KEY is absent (nothing is deleted either way).")
@click.option(
    "--prefix",
    metavar="PREFIX",
    help="Instead of KEY: delete every key starting with PREFIX, in one small commit however many there are.",
)
@click.option(
    "--range",
    "range_",
    nargs=2,
    metavar="START END",
    help="Instead of KEY: delete every key in [START, END) in one small commit ('' as END: to the last key).",
)
async def delete(
    s: Session,
    key: str | None = None,
    *,
    missing_ok: bool,
    prefix: str | None = None,
    range_: tuple[str, str] | None = None,
) -> None:
    """Delete KEY. An absent KEY changes nothing: exit 3, like get (0 with --missing-ok).

    With --prefix or --range, delete every key there in one commit of a few hundred
    bytes (a range delete: the keys are not listed, so nothing tells whether any
    existed; it always makes a new version)."""
    if prefix is not None or range_ is not None:
        await _delete_range(s, prefix, range_)
        return
    assert key is not None
    missing = object()

    async def attempt(tx: kvstore.Transaction) -> tuple[kvstore.Transaction, bool]:
        # Reading the key first makes deleting a missing key commit nothing (no new version);
        # a concurrent write to it is a conflict, which transact retries.
        if await tx.get(key, missing) is missing:
            return tx, False
        tx.delete(key)
        return tx, True

    async with s.open() as db:
        tx, deleted = await db.transact(attempt)
    version = tx.committed_version if deleted else tx.read_version
    if not deleted and not missing_ok:
        raise CliError(
            f"key {key!r} not found at version {version}: nothing deleted", EXIT_NOT_FOUND, name="KeyNotFound"
        )
    s.out.result(
        {**_key_json(key.encode()), "version": version, "deleted": deleted},
        f"deleted {key} at version {version}"
        if deleted
        else f"key {key} not found at version {version}: nothing deleted",
    )


async def _delete_range(s: Session, prefix: str | None, range_: tuple[str, str] | None) -> None:
    """`delete --prefix` / `delete --range`: one range delete."""
    if prefix is not None and range_ is not None:
        raise CliError("give --prefix or --range, not both", EXIT_USAGE)
    async with s.open() as db:
        if prefix is not None:
            version = await db.delete_prefix(prefix)
            s.out.result(
                {"prefix": prefix, "version": version},
                f"deleted every key starting with {prefix!r} at version {version}",
            )
            return
        assert range_ is not None
        start, end = range_
        version = await db.delete_range(start, end or None)
    s.out.result(
        {"start": start, "end": end or None, "version": version},
        f"deleted every key in [{start!r}, {end!r}) at version {version}"
        if end
        else f"deleted every key from {start!r} on at version {version}",
    )


def _operand(text: str, op: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{op} takes an integer N, not {text!r} (a negative one after `--`)", EXIT_USAGE) from None


async def _atomic(s: Session, key: str, n: str, op: str) -> None:
    """Run one atomic operation (`Store.add`, `max` or `min`) and report it."""
    operand = _operand(n, op)
    async with s.open() as db:
        version = await getattr(db, op)(key, operand)
    s.out.result(
        {**_key_json(key.encode()), "version": version, "op": op, "operand": operand},
        f"{op} {operand} to {key} at version {version}",
    )


@store_command(cli, "KEY N", mode="write", compacts=True)
async def add(s: Session, key: str, n: str) -> None:
    """Atomically add the integer N to KEY (a missing key counts as 0).

    A blind write: it never conflicts with other adds. The value reads as an
    int (8 bytes little-endian in a bytes store); it wraps around past the
    signed 64-bit range. A negative N goes after `--`: `kvstore add URL k -- -1`.
    """
    await _atomic(s, key, n, "add")


@store_command(cli, "KEY N", mode="write", compacts=True, name="max")
async def max_(s: Session, key: str, n: str) -> None:
    """Atomically raise the integer at KEY to at least N (a missing key becomes N)."""
    await _atomic(s, key, n, "max")


@store_command(cli, "KEY N", mode="write", compacts=True, name="min")
async def min_(s: Session, key: str, n: str) -> None:
    """Atomically lower the integer at KEY to at most N (a missing key becomes N)."""
    await _atomic(s, key, n, "min")


@store_command(cli, values=VALUE_CHOICES)
@click.option("--prefix", help="Only keys starting with this.")
@click.option("--start", help="Only keys >= this.")
@click.option("--end", help="Only keys < this.")
@click.option("--limit", type=click.IntRange(min=0), help="At most this many keys.")
@click.option("--reverse", is_flag=True, help="Descending key order.")
@click.option("--keys-only", is_flag=True, help="Print keys, not values.")
@_snapshot_options
async def scan(
    s: Session,
    *,
    prefix: str | None,
    start: str | None,
    end: str | None,
    limit: int | None,
    reverse: bool,
    keys_only: bool,
    at_version: int | None,
    tag_name: str | None,
) -> None:
    """List keys (and values) in key order; alias: ls."""

    def to_json(pair: tuple[bytes, bytes]) -> dict[str, Any]:
        key, raw = pair
        return _key_json(key) if keys_only else {**_key_json(key), "value": s.values.json(raw, key)}

    def to_cells(pair: tuple[bytes, bytes]) -> list[str]:
        key, raw = pair
        return [_key_text(key)] if keys_only else [_key_text(key), s.values.cell(raw, key)]

    async with s.open() as db:
        snap = await db.snapshot(version=at_version, tag=tag_name)
        with s.out.rows(to_json, to_cells) as add:
            async for pair in snap.scan(prefix, start=start, end=end, limit=limit, reverse=reverse):
                add(pair)


@store_command(cli)
@click.option("--limit", type=click.IntRange(min=0), help="At most this many commits.")
async def history(s: Session, *, limit: int | None) -> None:
    """List recent commits, newest first (from the manifest's commit log)."""
    async with s.open() as db:
        commits = await db.history(limit=limit)
    docs = [
        {
            "version": c.version,
            "time": c.time,
            "kind": c.kind,
            "transactions": c.transactions,
            "key_count": c.key_count,
            "meta": jsonable(c.meta, f"meta of version {c.version}"),
        }
        for c in commits
    ]
    rows = [
        [
            str(d["version"]),
            _time(d["time"]),
            d["kind"],
            str(d["transactions"]),
            str(d["key_count"]),
            json.dumps(d["meta"], ensure_ascii=False) if d["meta"] and any(d["meta"]) else "",
        ]
        for d in docs
    ]
    s.out.result(docs, *_aligned(rows, header=["VERSION", "TIME", "KIND", "TXNS", "KEYS", "META"]))


@cli.group(cls=_Group)
def tag() -> None:
    """Create, list and delete tags (named, retained versions)."""


def _tag_json(t: kvstore.Tag) -> dict[str, Any]:
    return {"name": t.name, "version": t.version, "created": t.created}


@store_command(tag, "NAME", mode="write", name="create")
async def tag_create(s: Session, name: str) -> None:
    """Retain the latest version under NAME (exit 4 if the name is taken)."""
    async with s.open() as db:
        t = await db.tag(name)
    s.out.result(_tag_json(t), f"tagged version {t.version} as {t.name}")


@store_command(tag, name="list")
async def tag_list(s: Session) -> None:
    """List tags, oldest version first."""
    async with s.open() as db:
        tags = await db.tags()
    s.out.result(
        [_tag_json(t) for t in tags],
        *_aligned([[t.name, str(t.version), _time(t.created)] for t in tags], ["NAME", "VERSION", "CREATED"]),
    )


@store_command(tag, "NAME", mode="write", name="delete")
async def tag_delete(s: Session, name: str) -> None:
    """Delete the tag NAME (exit 3 if there is none); gc frees what only it kept."""
    async with s.open() as db:
        await db.delete_tag(name)
    s.out.result({"name": name, "deleted": True}, f"deleted tag {name}")


@store_command(cli, "KEY", mode="write")
async def split(s: Session, key: str) -> None:
    """Add a partition boundary at KEY, online (writers keep going): the partition
    holding KEY becomes two, one ending and one starting at KEY. Prints the partitions."""
    async with s.open() as db:
        partitions = await _with_pulse("splitting", db.split(key))
    s.out.result(
        [_partition_json(p) for p in partitions], *(f"partition {p.id}: {_partition_text(p)}" for p in partitions)
    )


@store_command(cli, "KEY", mode="write", name="merge-partitions")
async def merge_partitions(s: Session, key: str) -> None:
    """Remove the partition boundary KEY, online (writers keep going): the two partitions
    on either side of it become one. Prints the partitions."""
    async with s.open() as db:
        partitions = await _with_pulse("merging", db.merge_partitions(key))
    s.out.result(
        [_partition_json(p) for p in partitions], *(f"partition {p.id}: {_partition_text(p)}" for p in partitions)
    )


@store_command(cli, mode="write")
@click.option("--full", is_flag=True, help="Merge every segment into one.")
async def compact(s: Session, *, full: bool) -> None:
    """Merge segments now (commits by others go on meanwhile)."""
    async with s.open() as db:
        results = await _with_pulse("compacting", db.compact(full=full))
    s.out.result(
        [dataclasses.asdict(r) for r in results],
        *(["nothing to compact"] if not results else []),
        *(
            f"version {r.version}: merged {r.inputs} segments into level {r.level}: "
            f"{r.entries_in} -> {r.entries_out} entries, {_size(r.bytes_in)} -> {_size(r.bytes_out)}"
            for r in results
        ),
    )


def _finite_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse nan and inf, which FloatRange lets through (a NaN grace period compares False)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number of seconds")
    return value


@store_command(cli, mode="write")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option(
    "--grace-period",
    type=click.FloatRange(min=0),
    callback=_finite_seconds,
    metavar="SECONDS",
    help="Keep objects younger than this (default and minimum: the store's recorded segment_grace_period, "
    "the longest its writers opened it with; 1 hour for a store made with the default).",
)
async def gc(s: Session, *, dry_run: bool, grace_period: float | None) -> None:
    """Delete objects that nothing references any more."""
    async with s.open("read" if dry_run else "write") as db:
        report = await _with_pulse("collecting", db.gc(dry_run=dry_run, grace_period=grace_period))
        log_length = db.options.commit_log_length
    s.out.result(dataclasses.asdict(report), *_gc_lines(report, log_length))


def _gc_lines(report: kvstore.GcReport, log_length: int) -> Iterator[str]:
    """What gc did and, for what it kept, why and until when."""
    verb = "would delete" if report.dry_run else "deleted"
    for name in report.deleted:
        yield f"{verb} {name}"
    if report.objects_deleted > len(report.deleted):
        yield f"... and {report.objects_deleted - len(report.deleted)} more"
    yield (f"{verb} {report.objects_deleted} objects ({_size(report.bytes_deleted)}); kept {sum(report.kept.values())}")
    for why, n in sorted(report.kept.items(), key=lambda item: -item[1]):
        if why == kvstore.GcReport.NAMED_BY_LOG and report.commit_log_versions is not None:
            oldest, newest = report.commit_log_versions
            yield (
                f"  kept {n}: {why} (versions {oldest}..{newest}); each becomes unreferenced when {log_length} "
                "later commits have pushed it out of the log, and collectable a grace period after that"
            )
        else:
            yield f"  kept {n}: {why}"
    if report.first_collectable is not None and report.last_collectable is not None:
        when = _time_minute(report.last_collectable)
        first = _time_minute(report.first_collectable)
        n = report.objects_waiting
        yield (
            f"{n} unreferenced object{'s' if n != 1 else ''} kept for the grace period "
            f"({_duration(report.grace_period)}): collectable after {when}"
            + (f" (the first after {first})" if first != when else "")
            + ("; a dry run saves no marks, so the period starts at the next real gc" if report.dry_run else "")
        )
    elif not report.objects_deleted:
        yield (
            "nothing is unreferenced yet: every object belongs to the latest version, the commit log or a "
            "tag (small commits live inside the manifest and never need collecting)"
        )


@store_command(cli)
async def verify(s: Session) -> None:
    """Read and check every object of the latest version (exit 5 if any is damaged)."""
    async with s.open() as db:
        report = await _with_pulse("verifying", db.verify())
    state = "ok" if report.ok else f"{len(report.damaged)} damaged"
    s.out.result(
        {
            "version": report.version,
            "objects_checked": report.objects_checked,
            "ok": report.ok,
            "damaged": report.damaged,
        },
        *(f"DAMAGED {name}: {what}" for name, what in report.damaged.items()),
        f"checked {report.objects_checked} objects at version {report.version}: {state}",
    )
    if not report.ok:
        raise click.exceptions.Exit(EXIT_DAMAGED)


@store_command(cli)
@click.option(
    "--grace-period",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="The segment_grace_period the clock skew is judged against (default: 1 hour).",
)
async def doctor(s: Session, *, grace_period: float | None) -> None:
    """Check that the endpoint has every property kvstore relies on (exit 1 if one fails).

    Writes scratch objects under PREFIX/doctor/ and deletes them before it
    exits; no store needs to exist at URL (for S3, the bucket must). Prints
    each property, its result (pass, fail, or n/a where it does not apply),
    what was seen, and what kvstore does with it.
    """
    state = _state()
    report = await _with_pulse(
        "checking",
        kvstore.doctor(
            s.url,
            endpoint_url=state.endpoint_url or None,
            profile=state.profile or None,
            region_name=state.region or None,
            s3_options=state.s3_options(),
            grace_period=grace_period,
        ),
    )
    rows = [
        [c.name, c.result.upper() if c.result == "fail" else c.result, c.detail, c.kvstore_does] for c in report.checks
    ]
    failed = report.failed
    verdict = (
        f"FAILED: {', '.join(failed)}: kvstore relies on {'it' if len(failed) == 1 else 'each'} "
        "(docs/operations.md, 'Checking an endpoint')"
        if failed
        else f"ok: every property kvstore relies on holds ({sum(c.result == 'n/a' for c in report.checks)} n/a)"
    )
    s.out.result(
        report.to_dict(),
        f"endpoint: {report.endpoint}",
        *_aligned(rows, ["property", "result", "seen", "what kvstore does"]),
        verdict,
    )
    if report.leftovers:
        Output.note(f"kvstore: warning: could not delete the scratch objects {', '.join(report.leftovers)}")
    if failed:
        raise click.exceptions.Exit(EXIT_ERROR)


@contextmanager
def _writing(path: str) -> Iterator[IO[str]]:
    """The export's destination: stdout for '-', else the file, with write errors in CLI words."""
    if path == "-":
        yield sys.stdout
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            yield f
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc}") from None


@store_command(cli, values=FILE_VALUE_CHOICES, name="export")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    default="-",
    show_default=True,
    metavar="PATH",
    help="Write JSON Lines here ('-': stdout).",
)
@click.option("--prefix", help="Only keys starting with this.")
@click.option("--start", help="Only keys >= this.")
@click.option("--end", help="Only keys < this.")
@_snapshot_options
async def export_(
    s: Session,
    *,
    output: str,
    prefix: str | None,
    start: str | None,
    end: str | None,
    at_version: int | None,
    tag_name: str | None,
) -> None:
    """Write every pair of one version as JSON Lines: {"key": ..., "value": ...}.

    Values are base64 text in a store of bytes, and the decoded objects as
    JSON in a store of msgpack values (bytes inside as {"$base64": ...}).
    Keys that are not UTF-8 are written as {"key_base64": ...}.
    """
    async with s.open() as db:
        snap = await db.snapshot(version=at_version, tag=tag_name)
        n = 0
        with _writing(output) as out, _bar(f"exporting version {snap.version}", count=True) as bar:
            async for key, raw in snap.scan(prefix, start=start, end=end):
                out.write(json.dumps({**_key_json(key), "value": s.values.json(raw, key)}, ensure_ascii=False) + "\n")
                n += 1
                if bar is not None:
                    bar.update(1)
    summary = f"exported {n} keys at version {snap.version}"
    if output == "-":  # stdout holds the export itself
        s.out.note(summary)
    else:
        s.out.result({"version": snap.version, "keys": n, "output": output}, f"{summary} to {output}")


def _read_jsonl(stream: Iterable[bytes], counter: list[int]) -> Iterator[tuple[bytes, Any, str]]:
    """Parse export lines into (key, "value" as in the file, where); counter[0] counts lines read."""
    for number, line in enumerate(stream, 1):
        counter[0] = number
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise CliError(f"{where}: not JSON: {exc}") from None
        if not isinstance(doc, dict) or "value" not in doc:
            raise CliError(f'{where}: expected {{"key": "...", "value": ...}}')
        yield _key_from_json(doc, where), doc["value"], where


@contextmanager
def _reading(path: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """The import's source and its line count (known for files when a progress bar is drawn)."""
    if path == "-":
        yield sys.stdin.buffer, None
        return
    try:
        with open(path, "rb") as f:
            lines = None
            if _state().show_progress():
                lines = sum(1 for _ in f)
                f.seek(0)
            yield f, lines
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from None


@store_command(cli, mode="create", values=FILE_VALUE_CHOICES, compacts=True, name="import")
@click.option(
    "-f",
    "--file",
    "file_",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    metavar="PATH",
    help="Read JSON Lines from here ('-': stdin).",
)
async def import_(s: Session, *, file_: str) -> None:
    """Load JSON Lines written by export, in one atomic commit (Store.bulk_load).

    Existing keys not in the input are kept; keys in it are overwritten. The
    store is created if it does not exist, recording --values (default: bytes),
    once the whole input has been read and checked: a bad line leaves nothing
    behind. Values are read in the store's codec: base64 text, or JSON for msgpack.
    """
    lines_read = [0]
    pairs = [0]  # pairs read from the input
    written = [0]  # pairs uploaded to the store (bulk_load reports them chunk by chunk)

    def shown(_: Any) -> str:
        return f"{written[0]} of {pairs[0]} pairs written"

    with ExitStack() as stack:
        stream, lines = stack.enter_context(_reading(file_))
        if not await _store_exists(s):
            stream = stack.enter_context(_checked_input(stream, s))
        bar = stack.enter_context(_bar("importing", length=lines, item=shown))

        def progress(n: int) -> None:
            written[0] = n
            if bar is not None:
                bar.render_progress()  # update() would not redraw: no input line was read

        def items(first: tuple[bytes, Any, str]) -> Iterator[tuple[bytes, bytes]]:
            for key, value, where in _chain(first, source):
                pairs[0] += 1
                if bar is not None:
                    bar.update(lines_read[0] - bar.pos)
                yield key, s.values.from_json(value, where)

        source = _read_jsonl(stream, lines_read)
        first = next(source, None)
        if first is None:  # bulk_load refuses empty input; an empty file imports nothing (and creates no store)
            s.out.result({"version": None, "keys": 0}, "nothing to import: the input has no pairs")
            return
        async with s.open() as db:
            version = await db.bulk_load(items(first), progress=progress)
            progress(pairs[0])  # committed: every pair is in the store
    s.out.result({"version": version, "keys": pairs[0]}, f"imported {pairs[0]} keys at version {version}")


async def _store_exists(s: Session) -> bool:
    """Whether the session's store exists (one manifest GET; nothing is created)."""
    try:
        async with s.open("read"):
            return True
    except kvstore.StoreNotFoundError:
        return False


@contextmanager
def _checked_input(stream: IO[bytes], s: Session) -> Iterator[IO[bytes]]:
    """The import's input, every line read and checked before a store is created for it.

    A store made by `import` exists only once its input is known to load: a bad
    line (not JSON, bad base64, a key or value over the limits) fails here, with
    nothing created. The lines are checked as they will be loaded, in the codec
    --values names (bytes by default), and the stream is given back rewound
    (stdin is kept in a temporary file).
    """
    _refuse_foreign_dir(s.url, "create the store first (`kvstore init URL --force`)")
    with ExitStack() as stack:
        kept = stream if stream.seekable() else stack.enter_context(tempfile.TemporaryFile())
        start = stream.tell() if stream is kept else 0
        try:
            _check_lines(_read_jsonl(stream if stream is kept else _copied(stream, kept), [0]), s)
        except CliError as exc:
            raise CliError(f"{exc}; nothing was imported, and no store was created at {s.url}", exc.exit_code) from exc
        kept.seek(start)
        yield kept


def _check_lines(lines: Iterator[tuple[bytes, Any, str]], s: Session) -> None:
    """Every pair of an import encodes, in the codec --values names, within the default limits."""
    values = Values(s.explicit or "bytes")
    limits = kvstore.StoreOptions()
    for key, value, where in lines:
        stored = values.from_json(value, where)
        if not 0 < len(key) <= limits.max_key_bytes:
            raise CliError(f"{where}: a key is 1 to {limits.max_key_bytes} bytes, not {len(key)}", EXIT_USAGE)
        if len(stored) > limits.max_value_bytes:
            raise CliError(
                f"{where}: the value of {len(stored)} bytes is over the {limits.max_value_bytes}-byte limit; "
                "split it across keys",
                EXIT_USAGE,
            )


def _copied(stream: IO[bytes], into: IO[bytes]) -> Iterator[bytes]:
    """The lines of `stream`, each written to `into` as it is read."""
    for line in stream:
        into.write(line)
        yield line


def _chain(first: T, rest: Iterator[T]) -> Iterator[T]:
    yield first
    yield from rest


@store_command(cli, until_interrupted=True)
@click.option("--prefix", help="Only changes to keys starting with this.")
@click.option("--start", help="Only changes to keys >= this.")
@click.option("--end", help="Only changes to keys < this.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to poll the manifest (a 304 when nothing changed).",
)
@click.option(
    "--since",
    type=click.IntRange(min=0),
    metavar="VERSION",
    help="Report commits after this version (default: from now).",
)
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N changes.")
async def watch(
    s: Session,
    *,
    prefix: str | None,
    start: str | None,
    end: str | None,
    interval: float,
    since: int | None,
    count: int | None,
) -> None:
    """Print each commit that changes watched keys, one line each, until Ctrl-C or --count."""
    async with s.open() as db:
        first = since if since is not None else await db.refresh()
        s.out.note(f"watching {db.url} for commits after version {first} (Ctrl-C stops)")
        seen = 0
        changes = db.watch(prefix, start=start, end=end, interval=interval, since=first)
        try:
            async for change in changes:
                ops = None if change.keys is None else await _operations(db, change)
                when = _time(change.time)
                ranges = [
                    f"{change.version}  {when}  delete  [{_key_text(lo)}, {'' if hi is None else _key_text(hi)})"
                    for lo, hi in change.deleted_ranges
                ]
                doc: dict[str, Any] = {
                    "version": change.version,
                    "time": change.time,
                    "keys": None if ops is None else [{**_key_json(k), "op": op} for k, op in ops],
                }
                if change.deleted_ranges:  # only then: a commit of keys prints as it always did
                    doc["deleted_ranges"] = [_range_json(lo, hi) for lo, hi in change.deleted_ranges]
                s.out.event(
                    doc,
                    *ranges,
                    *(
                        [f"{change.version}  {when}  ?       (too many keys to list: rescan)"]
                        if ops is None
                        else [f"{change.version}  {when}  {op:<6}  {_key_text(k)}" for k, op in ops]
                    ),
                )
                seen += 1
                if count is not None and seen >= count:
                    return
        finally:
            await changes.aclose()  # type: ignore[attr-defined]


def _range_json(start: bytes, end: bytes | None) -> dict[str, Any]:
    """A deleted range for JSON: its start and end keys as `_key_json` gives keys (end None: to the last key)."""
    return {"start": _key_json(start), "end": None if end is None else _key_json(end)}


async def _operations(db: kvstore.Store, change: kvstore.Change) -> list[tuple[bytes, str]]:
    """Whether each key of `change` was put or deleted: its value at the change's version.

    The commit log lists keys, not what happened to them, so this reads them
    (one snapshot, a GET per uncached segment). A version no longer retained
    (the watcher fell far behind) gives "change".
    """
    assert change.keys is not None
    missing = object()
    try:
        snap = await db.snapshot(version=change.version)
    except kvstore.VersionNotRetainedError:
        return [(k, "change") for k in change.keys]
    return [(k, "delete" if await snap.get(k, missing) is missing else "put") for k in change.keys]


# ----------------------------------------------------------------- errors and the entry point


def _exit_code(exc: kvstore.KvStoreError) -> int:
    if isinstance(exc, kvstore.ValidationError):
        return EXIT_USAGE  # a key, value, URL or option the command line was given
    if isinstance(exc, (kvstore.StoreNotFoundError, kvstore.TagNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (kvstore.ConflictError, kvstore.TagExistsError)):
        return EXIT_CONFLICT
    if isinstance(exc, kvstore.CorruptionError):
        return EXIT_DAMAGED
    return EXIT_ERROR  # e.g. AtomicOperandError: a key's value cannot take add/max/min


# The library's messages give Python advice (`create=True`, `Store.tags()`);
# at the command line the same advice is a command or an option. Each entry
# rewrites one phrase; "{url}" is the store URL of the failed command. A
# phrase the library no longer uses simply stops matching.
_CLI_WORDS: list[tuple[str, str]] = [
    ("open it with create=True (and not read_only) to make one", "create it with `kvstore init {url}`"),
    ("Store.tags() lists the tags", "`kvstore tag list {url}` lists them"),
    ("pass version= or tag=, not both", "give --version or --tag, not both"),
    (
        "pass a version that has been committed, or leave version= out",
        "give a --version that has been committed, or leave --version out",
    ),
    (
        "keep more with StoreOptions.history_versions or tag versions",
        "tag the versions you need to keep (`kvstore tag create {url} NAME`)",
    ),
    ("run `Store.verify()`", "run `kvstore verify {url}`"),
    ("open it again with kvstore.open()", "run the command again"),
    ("retry it (Store.transact does)", "run the command again"),
    ("use dry_run=True", "use --dry-run"),
    ("grace_period=", "--grace-period "),
    ("or leave the grace period out", "or leave --grace-period out"),
    (" (StoreOptions.max_key_bytes)", ""),
    (" (StoreOptions.max_value_bytes)", ""),
]


def cli_message(message: str, url: str | None) -> str:
    """A kvstore error message in command-line words (see `_CLI_WORDS`)."""
    for python, words in _CLI_WORDS:
        message = message.replace(python, words.replace("{url}", url or "URL"))
    return message


def _os_message(exc: OSError) -> str:
    """An OS error as the path and the system's reason, with what to check."""
    path = exc.filename if exc.filename is not None else "a local file"
    reason = exc.strerror or str(exc)
    return f"cannot use {path}: {reason}; check that the path is right and that you may write there"


def _error_name(exc: BaseException) -> str:
    """The name --json gives an error: the kvstore exception's, even when the command line
    rewrote its message (`CliError` from it), else the CliError's own or the exception type's."""
    if isinstance(exc, CliError):
        return type(exc.__cause__).__name__ if isinstance(exc.__cause__, kvstore.KvStoreError) else exc.name
    return type(exc).__name__


def _fail(message: str, code: int, state: State, exc: BaseException, *, shown: bool = False) -> NoReturn:
    """Exit with `code` after the error: one line on stderr (unless click `shown` it already) and,
    with --json, one JSON document on stdout, so a script reads every outcome from stdout."""
    if state.debug and not shown:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    text = " ".join(message.split())  # always one line
    if not shown:
        click.echo(f"kvstore: error: {text}", err=True)
    if state.json:
        doc = {"error": {"name": _error_name(exc), "message": text, "exit_code": code}}
        try:
            click.echo(json.dumps(doc, ensure_ascii=False))
        except OSError:
            pass  # stdout is gone (a closed pipe): the exit code and stderr still tell
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line (the `kvstore` console script and ``python -m kvstore``)."""
    state = State()
    args = list(sys.argv[1:] if argv is None else argv)
    options = args[: args.index("--") if "--" in args else len(args)]
    state.json = "--json" in options  # known before parsing, so a usage error is JSON too
    if "--debug" in options:
        state.debug = True  # known before parsing, so a parse-time failure shows its traceback too
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("kvstore").setLevel(logging.DEBUG)
    try:
        rc = cli.main(args, prog_name="kvstore", standalone_mode=False, obj=state)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        _fail(exc.format_message(), exc.exit_code, state, exc, shown=True)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        click.echo("kvstore: interrupted", err=True)
        _fail("interrupted", EXIT_INTERRUPTED, state, exc, shown=True)
    except CliError as exc:
        _fail(str(exc), exc.exit_code, state, exc)
    except OSError as exc:  # a local store's directory: missing, not writable, not a directory
        _fail(_os_message(exc), EXIT_ERROR, state, exc)
    except Exception as exc:  # noqa: BLE001 - a bug: still one line unless --debug
        _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", EXIT_ERROR, state, exc)
    sys.exit(rc if isinstance(rc, int) else EXIT_OK)
