"""The layer rules of docs/design.md, checked from the imports themselves.

    API (faces, CLI)  ->  transactions, commit  ->  manifest / segments  ->  object store

A layer imports only from layers below it. These tests read each module's
`import` statements (no module is executed), so a change that breaks a rule
fails here with the offending line.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kvstore"

# Modules that hold pure formats: bytes in, values out. They know no I/O.
FORMATS = {
    "_manifest",
    "_segment",
    "_operands",
    "_ttl",
    "_envelope",
    "_codec",
    "_layout",
    "_ranges",
    "_errors",
    "_version",
    "_value_refs",
    "_partition_map",
}
# What a format module may import from the package.
FORMAT_MAY_IMPORT = FORMATS
# Standard and third-party modules that mean I/O.
IO_MODULES = {"asyncio", "aiobotocore", "botocore", "aiohttp", "socket", "os", "fcntl", "shutil", "pathlib"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module is None or node.level and not node.module:
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def _package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _internal(module: str) -> str | None:
    """The kvstore module (first level below the package) an import refers to, or None."""
    parts = module.split(".")
    if parts[0] != "kvstore":
        return None
    return parts[1] if len(parts) > 1 else ""


def test_the_object_store_imports_nothing_above_it() -> None:
    allowed = {"_objectstore", "_errors", "_version"}
    offences = [
        f"{path.name}:{line} imports {module}"
        for path in (PACKAGE / "_objectstore").glob("*.py")
        for line, module in _imports(path)
        if _internal(module) not in (None, *allowed)
    ]
    assert offences == []


def test_formats_know_no_io() -> None:
    offences = []
    for name in FORMATS:
        path = PACKAGE / f"{name}.py"
        for line, module in _imports(path):
            internal = _internal(module)
            if internal is not None and internal not in FORMAT_MAY_IMPORT:
                offences.append(f"{path.name}:{line} imports {module}")
            if internal is None and module.split(".")[0] in IO_MODULES:
                offences.append(f"{path.name}:{line} imports {module} (I/O)")
    assert offences == []


def test_the_cli_uses_only_the_public_api() -> None:
    path = PACKAGE / "_cli.py"
    offences = [
        f"_cli.py:{line} imports {module}" for line, module in _imports(path) if _internal(module) not in (None, "")
    ]
    assert offences == []


def test_lower_layers_never_import_the_faces() -> None:
    faces = {"_store", "_sync", "_cli", "zarr", ""}  # "" is the package root, kvstore/__init__.py; zarr: a face
    offences = [
        f"{_module_name(path)}:{line} imports {module}"
        for path in _package_modules()
        if path.stem not in faces and path.name != "__main__.py" and "testing" not in path.parts
        for line, module in _imports(path)
        if _internal(module) in faces
    ]
    assert offences == []


@pytest.mark.parametrize("rule", [test_the_object_store_imports_nothing_above_it, test_formats_know_no_io])
def test_the_rules_catch_a_breach(rule: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rule fails on a module that breaks it (so the checks above can fail)."""
    fake = tmp_path / "kvstore"
    (fake / "_objectstore").mkdir(parents=True)
    for name in FORMATS:
        (fake / f"{name}.py").write_text("")
    (fake / "_objectstore" / "_s3.py").write_text("from .._store import Store\n")
    (fake / "_segment.py").write_text("import asyncio\nfrom ._segment_store import SegmentStore\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError):
        rule()  # type: ignore[operator]
