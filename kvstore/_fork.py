"""What a forked child inherits, and how it is kept from harm.

`os.fork()` (the default start method of `multiprocessing` on Linux before
Python 3.14, and how gunicorn, uWSGI and Celery start workers) copies the
parent's memory into the child, but not its threads: a store's event-loop
thread, its commit worker and its background compaction do not exist there,
while its objects (sockets, the event loop's epoll set, locks, queued
commits) do, shared with the parent where the kernel shares them. So:

* `generation()` counts the forks this process descends from; an object
  notes it when made, and one made before a fork knows it (`forked_since`).
  The faces decide what that means: `SyncStore` opens the store again in
  the child, an async `Store` refuses (`UsedAfterForkError`).
* The parent's objects are never finalised in the child. Finalising them
  there would act on the parent's connections: aiohttp's connector closes
  its pooled connections when collected, which unregisters their sockets
  from the epoll set the parent's event loop shares with the child (the
  parent then never hears its answers) and sends a TLS close_notify on the
  parent's connection. `keep_in_children` registers an object (an engine,
  a loop thread); in a child each one still alive is kept for the life of
  the process, even through interpreter shutdown. Its memory is the
  parent's, shared copy-on-write.
* `lock()` is a lock made in this process: one inherited from the parent
  may have been held by a thread that does not exist here.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

_generation = 0
_lock = threading.Lock()
_kept: weakref.WeakSet[object] = weakref.WeakSet()
_kept_here: list[object] = []  # the fallback where the C API cannot pin (see `_pin`)
_pin: Callable[[object], None] | None = None  # set by `_load_pin`, in the parent


def generation() -> int:
    """How many forks this process descends from (0 in a process that was not forked)."""
    return _generation


def forked_since(noted: int) -> bool:
    """Whether this process is a fork of the one that noted `noted` (from `generation()`)."""
    return noted != _generation


def lock() -> threading.Lock:
    """A process-wide lock made in this process (never one a parent thread may hold)."""
    return _lock


def keep_in_children(obj: object) -> None:
    """Never finalise `obj` in a forked child: it holds the parent's connections."""
    if _pin is None:
        _load_pin()
    _kept.add(obj)


def forget(obj: object) -> None:
    """`obj` was closed: it holds nothing a child must leave alone any more."""
    _kept.discard(obj)


def _after_fork_in_child() -> None:
    global _generation, _lock
    _generation += 1
    _lock = threading.Lock()
    inherited = list(_kept)
    _kept.clear()  # pinned below, for this process and its own children
    for obj in inherited:
        (_pin or _kept_here.append)(obj)


def _load_pin() -> None:
    """Choose how a child keeps an object alive until it ends, through interpreter shutdown.

    A list in a module is not enough: shutdown clears module globals and then
    runs the finalisers. An extra reference taken through the C API is never
    given back, so the object is never collected (its memory goes back to
    the system with the process). Loaded here, in the parent, so that the
    child loads no library (a parent thread may have held the loader's lock
    at the fork).
    """
    global _pin
    try:
        import ctypes

        incref = ctypes.pythonapi.Py_IncRef
        py_object = ctypes.py_object
    except (ImportError, AttributeError):  # an interpreter without CPython's C API
        _pin = _kept_here.append
        return

    def pin(obj: object) -> None:
        incref(py_object(obj))

    _pin = pin


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
