"""Runs independent tasks (sweep cells, fleet hosts) on a local process pool or a Dask cluster.

A task is a small dict of parameters (trace paths or generator settings, never arrays); a task
function turns it into a small result row. Failed tasks come back as rows carrying the error; the
others complete. With an output directory every finished row is appended to ``rows.jsonl`` as
it arrives, so ``resume=True`` skips tasks already done. Results are returned in task order, so
they are identical whatever the executor and worker count.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConfigError
from .results import write_results  # noqa: F401 - re-exported: where callers found it before

Task = dict[str, Any]
Row = dict[str, Any]
TaskFunction = Callable[[Task], Row]


def task_key(task: Task) -> str:
    """A stable name for a task's parameters (the resume key)."""
    return hashlib.sha1(json.dumps(task, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_one(fn: TaskFunction, task: Task) -> Row:
    """Run ``fn(task)``; an exception becomes a row with ``error`` and the task's parameters."""
    start = time.perf_counter()
    try:
        row = {**fn(task), "error": ""}
    except Exception as e:  # a failed task is reported, the rest complete
        row = {**task, "error": f"{type(e).__name__}: {e}",
               "traceback": "".join(traceback.format_exception(e))[-2000:]}
    row["task"] = task_key(task)
    row["wall_task_seconds"] = time.perf_counter() - start
    return row


def _progress(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="task", file=sys.stderr)


POOL_ROUNDS = 2          # full-pool rounds for tasks whose worker died, before each is tried alone


def _lost_worker(task: Task, tries: int) -> Row:
    return {**task, "error": f"BrokenProcessPool: the worker process running this task died ({tries} tries, the "
                             f"last alone in its own process); the other tasks went on",
            "task": task_key(task), "wall_task_seconds": 0.0}


def _pool_round(fn: TaskFunction, tasks: Sequence[Task], indices: Sequence[int], workers: int
                ) -> Iterator[tuple[int, Row | None]]:
    """Run ``tasks[i]`` for ``i`` in ``indices`` on a fresh pool; ``(i, None)`` for a task whose
    future broke because a worker process died (it or a neighbour was killed, ran out of memory...)."""
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(indices)))) as pool:
        futures = {pool.submit(run_one, fn, tasks[i]): i for i in indices}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    yield futures[f], f.result()
                except BrokenProcessPool:
                    yield futures[f], None


def _local(fn: TaskFunction, tasks: Sequence[Task], workers: int, inline: bool) -> Iterator[tuple[int, Row]]:
    """Tasks on a local process pool. A dead worker breaks the whole pool (every pending future
    fails), so the broken tasks are run again on a new pool, up to POOL_ROUNDS rounds, and those
    still broken then run one at a time, each in its own process: a task that kills its worker is
    reported as that task's failure and every other task completes."""
    if inline:
        for i, task in enumerate(tasks):
            yield i, run_one(fn, task)
        return
    todo = list(range(len(tasks)))
    for _ in range(POOL_ROUNDS):
        broken = []
        for i, row in _pool_round(fn, tasks, todo, workers):
            if row is None:
                broken.append(i)
            else:
                yield i, row
        if not broken:
            return
        todo = sorted(broken)
    for i in todo:                                   # alone: a break now is this task's own doing
        row = next(iter(_pool_round(fn, tasks, [i], 1)))[1]
        yield i, row if row is not None else _lost_worker(tasks[i], POOL_ROUNDS + 1)


_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?(\[[0-9a-fA-F:]+\]|[^\s:/]+)(?::(\d{1,5}))?")


def dask_client(scheduler: Any, timeout: float = 10.0) -> Any:
    """A ``dask.distributed.Client`` for ``scheduler`` (an address or a Client), connected now.
    Raises ConfigError, one line with the fix, when dask is missing or the scheduler is not there."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError("--scheduler needs dask.distributed, which is not installed: "
                          "pip install 'nvemu[dask]' (here and on every worker)") from None
    if isinstance(scheduler, Client):
        return scheduler
    if not isinstance(scheduler, str) or not _ADDRESS.fullmatch(scheduler.strip()):
        raise ConfigError(f"--scheduler {scheduler!r} is not a Dask scheduler address (e.g. tcp://host:8786)")
    try:
        return Client(scheduler.strip(), timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s "
                          f"({type(e).__name__}); start one there with `dask scheduler` and `dask worker "
                          f"{scheduler}`, or leave out --scheduler to use local processes") from None


def _dask(fn: TaskFunction, tasks: Sequence[Task], client: Any, own: bool) -> Iterator[tuple[int, Row]]:
    from dask.distributed import as_completed
    try:
        futures = client.map(run_one, [fn] * len(tasks), list(tasks), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for f in as_completed(futures):
            try:
                yield index[f.key], f.result()
            except Exception as e:  # noqa: BLE001 - a worker lost with the task: that task's failure
                yield index[f.key], {**tasks[index[f.key]], "error": f"{type(e).__name__}: {e}",
                                     "task": task_key(tasks[index[f.key]]), "wall_task_seconds": 0.0}
    finally:
        if own:
            client.close()


def read_journal(journal: Path) -> dict[str, Row]:
    """The successful rows of a ``rows.jsonl`` journal by task key. Lines that are not a JSON row
    (cut short by an interrupted run, or damaged) are skipped with one warning: their tasks run
    again."""
    done: dict[str, Row] = {}
    bad = 0
    with open(journal, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                bad += 1
                continue
            if not isinstance(row, dict) or not isinstance(row.get("task"), str):
                bad += 1
                continue
            if not row.get("error"):
                done[row["task"]] = row
    if bad:
        print(f"nvemu: warning: {journal}: skipped {bad} unreadable line(s); their tasks run again", file=sys.stderr)
    return done


def execute(fn: TaskFunction, tasks: Sequence[Task], *, scheduler: Any = None, workers: int | None = None,
            out_dir: str | os.PathLike[str] | None = None, resume: bool = False,
            progress: bool | None = None, desc: str = "tasks", inline: bool | None = None) -> list[Row]:
    """Run ``fn`` over ``tasks`` and return one row per task, in task order.

    ``scheduler``: None for a local pool of ``workers`` processes (default: one per core), a Dask
    address such as ``tcp://host:8786``, or a ``dask.distributed.Client``. ``inline``: run in this
    process instead of a pool (default: when ``workers`` is 1).
    """
    journal = None
    done: dict[str, Row] = {}
    client = dask_client(scheduler) if scheduler is not None else None     # fail before any work
    own_client = client is not None and client is not scheduler
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        journal = Path(out_dir) / "rows.jsonl"
        if resume and journal.exists():
            done = read_journal(journal)
        elif journal.exists():
            journal.unlink()
    rows: list[Row | None] = [done.get(task_key(t)) for t in tasks]
    todo = [i for i, r in enumerate(rows) if r is None]
    bar = _progress(len(tasks), progress, desc)
    failed = 0
    if bar is not None:
        bar.update(len(tasks) - len(todo))
    workers = workers or os.cpu_count() or 1
    inline = workers <= 1 if inline is None else inline
    runs = (_local(fn, [tasks[i] for i in todo], workers, inline) if client is None
            else _dask(fn, [tasks[i] for i in todo], client, own_client))
    with (open(journal, "a") if journal else open(os.devnull, "w")) as log:
        for k, row in runs:
            rows[todo[k]] = row
            failed += bool(row["error"])
            log.write(json.dumps(row, default=str) + "\n")
            log.flush()
            if bar is not None:
                bar.set_postfix(done=bar.n + 1, failed=failed)
                bar.update(1)
    if bar is not None:
        bar.close()
    return [r for r in rows if r is not None]
