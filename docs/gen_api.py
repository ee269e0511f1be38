"""Generate docs/api.md from the docstrings of kvstore's public names.

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 if docs/api.md is out of date (the test suite runs this)

Every name in `kvstore.__all__` is documented; signatures are shown as
written in the source (annotations are not evaluated), so the output does not
depend on the Python version.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

import kvstore

OUT = Path(__file__).resolve().parent / "api.md"

SECTIONS: list[tuple[str, str, list[str]]] = [
    (
        "Opening a store",
        "Both faces take the same arguments; `open_sync` returns the blocking face.",
        ["open", "open_sync", "StoreOpener"],
    ),
    ("The async API", "", ["Store", "Snapshot", "Transaction"]),
    (
        "The blocking API",
        "Thin faces over the async API: one event-loop thread per `SyncStore`.",
        ["SyncStore", "SyncSnapshot", "SyncTransaction"],
    ),
    (
        "Distributed writes",
        "A picklable job whose parts any process writes; one commit publishes them (docs/distributed.md).",
        ["DistributedWrite", "Part", "SyncDistributedWrite"],
    ),
    ("Results", "", ["CommitInfo", "Change", "PartitionInfo", "Tag", "VerifyReport", "CompactionResult", "GcReport"]),
    ("Options", "", ["StoreOptions", "S3Options", "RetryPolicy"]),
    (
        "Checking an endpoint",
        "What `kvstore doctor URL` runs: every property kvstore relies on, on scratch objects it deletes.",
        ["doctor", "doctor_sync", "DoctorReport", "DoctorCheck"],
    ),
]


def _annotation(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _signature(obj: Any, name: str, skip_self: bool) -> str:
    """`name(params) -> return`, annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    parts: list[str] = []
    star_done = False
    for i, p in enumerate(sig.parameters.values()):
        if skip_self and i == 0 and p.name in ("self", "cls"):
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
            text = f"*{p.name}"
        elif p.kind is p.VAR_KEYWORD:
            text = f"**{p.name}"
        else:
            text = p.name
        annotation = _annotation(p.annotation)
        if annotation:
            text += f": {annotation}"
        if p.default is not p.empty:
            default = "<factory>" if repr(p.default) == "<factory>" else repr(p.default)
            text += f" = {default}" if annotation else f"={default}"
        parts.append(text)
    returns = _annotation(sig.return_annotation)
    return f"{name}({', '.join(parts)})" + (f" -> {returns}" if returns else "")


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else "*(no docstring)*"


def _block(text: str) -> str:
    """A docstring as Markdown: indented code stays code, the rest is text."""
    out: list[str] = []
    in_code = False
    for line in text.splitlines():
        code = line.startswith("    ") and (in_code or not out or out[-1] == "")
        if code and not in_code:
            out.append("```python")
            in_code = True
        elif not code and in_code and line.strip():
            out.append("```")
            out.append("")
            in_code = False
        out.append(line[4:] if in_code else line)
    if in_code:
        while out and not out[-1].strip():
            out.pop()
        out.append("```")
    return "\n".join(out)


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public members defined by `cls` itself, in source order."""
    found = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            found.append((name, value))
    return found


def _class(name: str, cls: type) -> list[str]:
    lines = [f"### `{name}`", ""]
    if issubclass(cls, BaseException):
        bases = ", ".join(f"`{b.__name__}`" for b in cls.__bases__)
        lines += [f"*exception; subclass of {bases}*", ""]
    elif dataclasses.is_dataclass(cls):
        lines += [f"```python\n{_signature(cls, name, skip_self=False)}\n```", ""]
    else:
        init = vars(cls).get("__init__")
        if init is not None and name not in (
            "Store",
            "Snapshot",
            "SyncStore",
            "SyncSnapshot",
            "SyncTransaction",
            "Transaction",
            "StoreOpener",
        ):
            lines += [f"```python\n{_signature(init, name, skip_self=True)}\n```", ""]
    lines += [_block(_doc(cls)), ""]
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            lines.append(f"* `{f.name}`: `{_annotation(f.type)}`")
        lines.append("")
    for member, value in _members(cls):
        if isinstance(value, property):
            lines += [f"#### `{name}.{member}` *(property)*", "", _block(_doc(value)), ""]
            continue
        prefix = "async " if inspect.iscoroutinefunction(value) else ""  # async iterators: see the return type
        lines += [
            f"#### `{name}.{member}`",
            "",
            f"```python\n{prefix}{_signature(value, member, skip_self=True)}\n```",
            "",
            _block(_doc(value)),
            "",
        ]
    return lines


def render() -> str:
    """The whole of docs/api.md."""
    names = set(kvstore.__all__)
    errors = _error_order(
        {n for n in names if isinstance(getattr(kvstore, n), type) and issubclass(getattr(kvstore, n), BaseException)}
    )
    listed = [n for _, _, members in SECTIONS for n in members]
    other = sorted(names - set(listed) - set(errors))
    sections = SECTIONS + ([("Other", "", other)] if other else [])
    missing = set(listed) - names
    if missing:
        raise SystemExit(f"gen_api.py lists names that kvstore does not export: {sorted(missing)}")

    lines = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings; do not edit by hand. -->",
        "<!-- not-run-page: the blocks are signatures, not programs (tests/test_docs.py runs other pages' blocks) -->",
        "",
        (
            f"kvstore {kvstore.__version__}. Every public name is importable from `kvstore`. "
            "Concepts are explained in [concepts.md](concepts.md); errors and what to do about "
            "them in [troubleshooting.md](troubleshooting.md)."
        ),
        "",
        "## Contents",
        "",
    ]
    for title, _, members in sections:
        lines.append(f"* {title}: " + ", ".join(f"[`{m}`](#{m.lower()})" for m in members))
    lines.append("* [Errors](#errors): " + ", ".join(f"`{e}`" for e in errors))
    lines.append("")
    for title, intro, members in sections:
        lines += [f"## {title}", ""]
        if intro:
            lines += [intro, ""]
        for member in members:
            obj = getattr(kvstore, member)
            if inspect.isclass(obj):
                lines += _class(member, obj)
            else:
                lines += [
                    f"### `{member}`",
                    "",
                    f"```python\n{_signature(obj, member, skip_self=False)}\n```",
                    "",
                    _block(_doc(obj)),
                    "",
                ]
    lines += [
        "## Errors",
        "",
        "Every exception derives from `KvStoreError`:",
        "",
        "```",
        _error_tree(errors),
        "```",
        "",
        "What each one means and what to do: [troubleshooting.md](troubleshooting.md).",
        "",
    ]
    for member in errors:
        lines += _class(member, getattr(kvstore, member))
    return "\n".join(lines).rstrip() + "\n"


def _error_order(errors: set[str]) -> list[str]:
    """Exception names depth-first from KvStoreError, siblings by name."""
    order: list[str] = []

    def walk(cls: type) -> None:
        order.append(cls.__name__)
        for child in sorted(
            (getattr(kvstore, n) for n in errors if cls in getattr(kvstore, n).__bases__), key=lambda c: c.__name__
        ):
            walk(child)

    walk(kvstore.KvStoreError)
    missing = errors - set(order)
    if missing:
        raise SystemExit(f"exceptions outside the KvStoreError tree: {sorted(missing)}")
    return order


def _error_tree(errors: list[str]) -> str:
    classes = [getattr(kvstore, n) for n in errors]

    def children(parent: type) -> list[type]:
        return sorted((c for c in classes if parent in c.__bases__), key=lambda c: c.__name__)

    out: list[str] = []

    def walk(cls: type, depth: int) -> None:
        extra = [b.__name__ for b in cls.__bases__ if b.__module__ == "builtins" and b is not Exception]
        out.append("    " * depth + cls.__name__ + (f" (also {', '.join(extra)})" if extra else ""))
        for child in children(cls):
            walk(child, depth + 1)

    walk(kvstore.KvStoreError, 0)
    return "\n".join(out)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
