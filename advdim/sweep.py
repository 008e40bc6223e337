"""The sweep executor shared by ``simulate`` and ``empirical``: cells -> results -> run store.

A sweep is a list of JSON-able configurations (*cells*) and a module-level function
``fn(config) -> dict``.  :func:`run_sweep` computes every cell not yet in the store, writes each
result the moment it finishes (one transaction per cell, by the calling process: the store has a
single writer whatever the executor), and returns the results in the order of the configs.

Executors, chosen by arguments (the code of a sweep does not change):

- in-process (default): a plain loop;
- ``workers=N``: N local processes (``spawn`` start method; ``fn`` must be importable);
- ``scheduler="tcp://host:8786"``: a Dask ``distributed`` cluster.  A worker that dies mid-task
  has its task re-run elsewhere by the scheduler; a result can only be written once, because the
  store ignores a second write of the same key.

    >>> run_sweep("demo", [{"x": 1}, {"x": 2}], _square, progress=False)
    [{'y': 1}, {'y': 4}]
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from advdim.errors import AdvdimError, StoreError
from advdim.store import RunStore, canonical

Config = dict[str, Any]
Result = dict[str, Any]


def _square(config: Config) -> Result:
    """A demo cell function (used by the doctest and the executor tests)."""
    return {"y": config["x"] ** 2}


def _init_worker(threads: int) -> None:
    from advdim.alloc import keep_freed_memory

    keep_freed_memory()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


@contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled or total == 0:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from advdim.cli import err

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=False) as bar:
        task = bar.add_task(description or "cells", total=total)
        yield lambda: bar.advance(task)


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
    """
    if workers < 0:
        raise AdvdimError(f"workers must be >= 0, got {workers}")
    if workers and scheduler:
        raise AdvdimError("give either --workers or --scheduler, not both")
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

    with _progress(len(todo), description or kind, progress) as advance:
        if scheduler:
            _run_dask(scheduler, connect_timeout, todo, fn, finish, advance)
        elif workers:
            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(threads,)) as pool:
                futures = {pool.submit(fn, c): (k, c) for k, c in todo}
                for fut in cf.as_completed(futures):
                    k, c = futures[fut]
                    finish(k, c, fut.exception() or fut.result())
                    advance()
        else:
            for k, c in todo:
                finish(k, c, _call(fn, c))
                advance()
    if failures:
        first = failures[0]
        where = "are in the run store: fix the cause and rerun with --resume" if store is not None else "are lost"
        raise AdvdimError(f"{len(failures)} of {len(todo)} cells failed (first: {type(first).__name__}: {first}); "
                          f"the {len(todo) - len(failures)} finished cells {where}") from first
    return [done[k] for k in keys]


def _call(fn: Callable[[Config], Result], config: Config) -> Result | Exception:
    """``fn(config)``, or the exception it raised (the sweep goes on; ``KeyboardInterrupt`` stops it)."""
    try:
        return fn(config)
    except Exception as e:  # noqa: BLE001 - reported with the others at the end of the sweep
        return e


def _run_dask(address: str, timeout: float, todo: list[tuple[str, Config]], fn: Callable[[Config], Result],
              finish: Callable[[str, Config, Result | BaseException], None], advance: Callable[[], None]) -> None:
    try:
        from distributed import Client, as_completed
    except ImportError:  # pragma: no cover - distributed is a dependency
        raise AdvdimError("the Dask executor needs the 'distributed' package") from None
    try:
        client = Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as e:
        raise AdvdimError(f"cannot reach the Dask scheduler at {address!r}: {e}") from None
    try:
        futures = client.map(fn, [c for _, c in todo], pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            k, c = todo[index[fut.key]]
            finish(k, c, fut.exception() or fut.result())
            advance()
    finally:
        client.close()
