"""The sweep executor shared by ``simulate`` and ``empirical``: cells -> results -> run store.

A sweep is a list of JSON-able configurations (*cells*) and a module-level function
``fn(config) -> dict``.  :func:`run_sweep` computes every cell not yet in the store, writes each
result the moment it finishes (one transaction per cell, by the calling process: the store has a
single writer whatever the executor), and returns the results in the order of the configs.

Executors, chosen by arguments (the code of a sweep does not change):

- in-process (default): a plain loop;
- ``workers=N``: N local processes (``spawn`` start method; ``fn`` must be importable).  The
  workers ignore Ctrl-C (the terminal sends it to the whole process group: the parent stops
  them) and end on their own within a second when the parent dies, even by ``kill -9``;
- ``scheduler="tcp://host:8786"``: a Dask ``distributed`` cluster.  A worker that dies mid-task
  has its task re-run elsewhere by the scheduler; a result can only be written once, because the
  store ignores a second write of the same key.

Whatever stops a sweep, the cells finished before are in the store and ``--resume`` goes on from
them: Ctrl-C raises :class:`~advdim.errors.Interrupted` and a lost Dask scheduler an
:class:`~advdim.errors.AdvdimError`, each with a one-line message that says how many are kept.

    >>> run_sweep("demo", [{"x": 1}, {"x": 2}], _square, progress=False)
    [{'y': 1}, {'y': 4}]
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from advdim.errors import AdvdimError, Interrupted, StoreError
from advdim.store import RunStore, canonical

Config = dict[str, Any]
Result = dict[str, Any]


def _square(config: Config) -> Result:
    """A demo cell function (used by the doctest and the executor tests)."""
    return {"y": config["x"] ** 2}


def _sleep(config: Config) -> Result:
    """A slow demo cell: sleeps ``config["seconds"]`` (used by the interruption tests)."""
    time.sleep(config["seconds"])
    return {"slept": config["seconds"]}


def _init_worker(threads: int, parent: int) -> None:
    """Set up a worker process of the pool started by process ``parent``."""
    from advdim.alloc import keep_freed_memory

    # Ctrl-C reaches every process of the terminal's group: the parent handles it and ends the
    # workers, which must not print a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # held since the start (_sigint_blocked): a pending one is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent)
    keep_freed_memory()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """End this process when process ``parent`` dies, even by SIGKILL (no orphaned workers).

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``).  It fires when
    the parent *thread* that started this process exits: the pool starts its workers in
    ``submit``, i.e. in the thread that runs :func:`run_sweep`, which outlives the pool (it ends
    the workers before it returns).  Everywhere, and should the parent die before ``prctl``, a
    daemon thread also checks the parent every half second (:func:`_watch_parent`).
    """
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0))
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl: the thread suffices
            pass
    threading.Thread(target=_watch_parent, args=(parent,), name="advdim-watch-parent", daemon=True).start()


def _watch_parent(parent: int, every: float = 0.5) -> None:
    """Exit the process (status 1, at once) as soon as its parent is no longer process ``parent``."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Hold SIGINT in this thread while it starts workers.  They inherit the mask, so a Ctrl-C
    that comes before :func:`_init_worker` ignores it is dropped there rather than printed as a
    traceback; here it is delivered on leaving (nothing is lost)."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled or total == 0:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from advdim.console import err

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=False) as bar:
        task = bar.add_task(description or "cells", total=total)
        yield lambda: bar.advance(task)


_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):\d{1,5}$|^inproc://\S+$")


def check_scheduler(address: str) -> str:
    """A Dask scheduler address (``tcp://host:8786``, ``host:8786``, ``tls://...``), checked before any work.

    >>> check_scheduler("tcp://127.0.0.1:8786")
    'tcp://127.0.0.1:8786'
    """
    if not isinstance(address, str) or not _ADDRESS.match(address.strip()):
        raise AdvdimError(f"--scheduler must be a Dask scheduler address such as tcp://host:8786, got {address!r}")
    return address.strip()


#: seconds to wait for a scheduler to accept a connection, and then for its handshake
SCHEDULER_PROBE_TIMEOUT = 5.0


def probe_scheduler(address: str, timeout: float | None = None) -> str:
    """:func:`check_scheduler`, then a short handshake, before any work: one :class:`AdvdimError`
    that tells a scheduler that cannot be reached (nothing listens, unknown host, no answer within
    ``timeout``) from an address that answers but is not Dask (an HTTP server, ...).

    A Dask ``tcp://`` endpoint sends its handshake (a framed msgpack message with its Python version
    and pickle protocol) as soon as it accepts a connection; this reads it and closes.  ``tls://``,
    ``ws://`` and ``wss://`` addresses are only connected to (their handshake is encrypted or HTTP),
    ``ucx://`` and ``inproc://`` not probed.  Returns the address.
    """
    import socket
    import struct

    address = check_scheduler(address)
    timeout = SCHEDULER_PROBE_TIMEOUT if timeout is None else timeout
    scheme, _, rest = address.rpartition("://")
    scheme = scheme or "tcp"
    if scheme not in ("tcp", "tls", "ws", "wss"):
        return address
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except socket.gaierror as e:
        raise AdvdimError(f"cannot reach the Dask scheduler at {address!r}: unknown host {host!r} ({e.strerror})") \
            from None
    except TimeoutError:
        raise AdvdimError(f"cannot reach the Dask scheduler at {address!r}: no answer within {timeout:g} s; "
                          "is it running?") from None
    except OSError as e:
        raise AdvdimError(f"cannot reach the Dask scheduler at {address!r} ({e.strerror or e}); is it running?") \
            from None
    with sock:
        if scheme != "tcp":
            return address
        sock.settimeout(timeout)
        try:
            head = _recv(sock, 8)
            (n,) = struct.unpack("<Q", head)
            body = _recv(sock, n) if 0 < n <= 1 << 16 else b""
            info = _handshake(body)
        except TimeoutError:
            raise AdvdimError(f"{address} answers but is not a Dask scheduler: it sent no Dask handshake within "
                              f"{timeout:g} s (an HTTP or other server?)") from None
        except OSError as e:
            raise AdvdimError(f"{address} answers but is not a Dask scheduler: it closed the connection without a "
                              f"Dask handshake ({e.strerror or e})") from None
        if info is None:
            said = (head + body)[:24].decode("ascii", "replace")
            raise AdvdimError(f"{address} answers but is not a Dask scheduler: it sent {said!r}, not a Dask "
                              "handshake") from None
    return address


def _recv(sock: Any, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock`` (``ConnectionError`` if it closes first)."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _handshake(body: bytes) -> dict[str, Any] | None:
    """The Dask handshake framed in ``body``, or None when it is not one."""
    if not body:
        return None
    try:
        from distributed.protocol.core import loads
        from distributed.protocol.utils import unpack_frames

        msg = loads(unpack_frames(body))
    except Exception:  # noqa: BLE001 - whatever the bytes were, they were not a Dask message
        return None
    return msg if isinstance(msg, dict) and "pickle-protocol" in msg else None


def run_sweep(
    kind: str,
    configs: Sequence[Config],
    fn: Callable[[Config], Result],
    store: RunStore | None = None,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    resume: bool = True,
    progress: bool = True,
    description: str = "",
    connect_timeout: float = 30.0,
) -> list[Result]:
    """Compute ``fn`` on every config, storing each finished cell at once.

    Args:
        kind: record kind in the store (e.g. ``"simulate.cell"``).
        configs: JSON-able configurations; duplicates are computed once.
        fn: module-level function ``config -> result dict`` (picklable for processes / Dask).
        store: run store to read finished cells from and write new ones to (optional).
        workers: ``0`` in-process; ``N >= 1`` local processes.
        scheduler: address of a Dask ``distributed`` scheduler (exclusive with ``workers``).
        resume: reuse cells already in the store.  Without it, a store that already holds
            any of these cells is an error (stored results are never overwritten).
        progress: show a progress bar on stderr.
        connect_timeout: seconds to wait for the Dask scheduler.
    Returns:
        The results, in the order of ``configs``.
    Raises:
        Interrupted: Ctrl-C (or SIGTERM made a ``KeyboardInterrupt``); the queued cells are
            dropped, the running ones stopped, and the message says how many cells are stored.
        AdvdimError: bad arguments, cells that failed (the others are stored first), or the
            Dask scheduler unreachable or lost mid-sweep.
    """
    if workers < 0:
        raise AdvdimError(f"workers must be >= 0, got {workers}")
    if workers and scheduler:
        raise AdvdimError("give either --workers or --scheduler, not both")
    if scheduler is not None:
        check_scheduler(scheduler)
    keys = [canonical(c) for c in configs]
    unique: dict[str, Config] = {}
    for k, c in zip(keys, configs):
        unique.setdefault(k, c)
    done: dict[str, Result] = {}
    if store is not None:
        for k, c in unique.items():
            r = store.get(kind, c)
            if r is not None:
                done[k] = r
        if done and not resume:
            raise StoreError(
                f"the run store {str(store.path)!r} already holds {len(done)} of these cells; "
                "use --resume to continue, or another store"
            )
    todo = [(k, c) for k, c in unique.items() if k not in done]

    failures: list[BaseException] = []

    def finish(key: str, config: Config, result: Result | BaseException) -> None:
        """Store a finished cell; a failed one is remembered and the sweep goes on with the others."""
        if isinstance(result, BaseException):
            failures.append(result)
            return
        if not isinstance(result, dict):
            raise AdvdimError(f"a cell function must return a dict, got {type(result).__name__}")
        if store is not None:
            store.put(kind, config, result)
        done[key] = result

    def kept() -> str:
        """What a stopped sweep keeps.  The store is asked, not ``done``: an interrupt raised as
        ``store.put`` returns comes after the commit but before ``finish`` counts the cell."""
        if store is None:
            return f"no --store, the {_cells(len(done))} finished are lost"
        n = len(done)
        with suppress(StoreError):  # a store that fails now: count what finish saw
            n += sum(store.has(kind, c) for k, c in todo if k not in done)
        return f"{_cells(n)} stored"

    try:
        with _progress(len(todo), description or kind, progress) as advance:
            if scheduler:
                _run_dask(scheduler, connect_timeout, todo, fn, finish, advance)
            elif workers:
                _run_processes(workers, todo, fn, finish, advance)
            else:
                for k, c in todo:
                    finish(k, c, _call(fn, c))
                    advance()
    except KeyboardInterrupt:
        rerun = "; rerun with --resume" if store is not None else ""
        raise Interrupted(f"interrupted: {kept()}{rerun}") from None
    except _SchedulerLost:
        rerun = "rerun with --resume" if store is not None else "rerun"
        raise AdvdimError(f"lost the Dask scheduler at {scheduler}: {kept()}; restart it and {rerun}") from None
    if failures:
        first = failures[0]
        where = "are in the run store: fix the cause and rerun with --resume" if store is not None else "are lost"
        raise AdvdimError(f"{len(failures)} of {len(todo)} cells failed (first: {type(first).__name__}: {first}); "
                          f"the {len(todo) - len(failures)} finished cells {where}") from first
    return [done[k] for k in keys]


def _cells(n: int) -> str:
    return f"{n} cell{'' if n == 1 else 's'}"


def _call(fn: Callable[[Config], Result], config: Config) -> Result | Exception:
    """``fn(config)``, or the exception it raised (the sweep goes on; ``KeyboardInterrupt`` stops it)."""
    try:
        return fn(config)
    except Exception as e:  # noqa: BLE001 - reported with the others at the end of the sweep
        return e


def _run_processes(workers: int, todo: list[tuple[str, Config]], fn: Callable[[Config], Result],
                   finish: Callable[[str, Config, Result | BaseException], None], advance: Callable[[], None]) -> None:
    """The ``workers=N`` executor.  On any exception (Ctrl-C included) the queued cells are
    cancelled and the workers ended at once, not left to finish their cells."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(threads, os.getpid()))
    pending: dict[cf.Future[Result], tuple[str, Config]] = {}  # futures not yet given to finish
    try:
        with _sigint_blocked():
            for k, c in todo:
                pending[pool.submit(fn, c)] = (k, c)
        for fut in cf.as_completed(list(pending)):
            k, c = pending[fut]
            finish(k, c, fut.exception() or fut.result())
            advance()
            del pending[fut]
    except KeyboardInterrupt:
        _stop(pool)
        for fut, (k, c) in pending.items():  # cells that finished as the interrupt came: stored too
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                finish(k, c, fut.result())
        raise
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel the queued cells and end the workers (SIGTERM, then SIGKILL after 5 s)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # private, the same in 3.8-3.13
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(5)
        if p.is_alive():  # pragma: no cover - a worker stuck in uninterruptible I/O
            p.kill()
            p.join()


class _SchedulerLost(Exception):  # noqa: N818 - internal signal, turned into an AdvdimError by run_sweep
    """The connection to the Dask scheduler broke mid-sweep."""


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """Raise distributed's loggers to CRITICAL for the sweep (then restore them): a lost scheduler
    is one line of ours, not distributed's hundred lines of ``CommClosedError`` tracebacks."""
    import logging

    loggers = [logging.getLogger("distributed")] + [
        lg for name, lg in logging.root.manager.loggerDict.items()
        if name.startswith("distributed.") and isinstance(lg, logging.Logger)
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _run_dask(address: str, timeout: float, todo: list[tuple[str, Config]], fn: Callable[[Config], Result],
              finish: Callable[[str, Config, Result | BaseException], None], advance: Callable[[], None]) -> None:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        raise AdvdimError("the Dask executor needs the 'distributed' package") from None
    with _quiet_dask():
        try:
            client = Client(address, timeout=f"{timeout}s")
        except (OSError, TimeoutError, ValueError) as e:
            raise AdvdimError(f"cannot reach the Dask scheduler at {address!r} ({e}); is it running?") from None
        try:  # closing the client releases its futures: the scheduler drops the queued cells
            futures = client.map(fn, [c for _, c in todo], pure=False)
            for i, outcome in _dask_outcomes(futures):
                k, c = todo[i]
                finish(k, c, outcome)
                advance()
        finally:
            client.close()


def _dask_outcomes(futures: list[Any]) -> Iterator[tuple[int, Result | BaseException]]:
    """(index, result or the cell's exception) of the Dask ``futures`` as they finish.  Raises
    :class:`_SchedulerLost` when the connection breaks: distributed then cancels every future
    (we never cancel one ourselves) or fetching a result fails with an ``OSError``
    (``CommClosedError``, ``TimeoutError``) or a ``CancelledError``."""
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for fut in as_completed(futures):
            if fut.cancelled():
                raise _SchedulerLost
            error = fut.exception()
            yield index[fut.key], error if error is not None else fut.result()
    except (OSError, cf.CancelledError, asyncio.CancelledError):
        raise _SchedulerLost from None
