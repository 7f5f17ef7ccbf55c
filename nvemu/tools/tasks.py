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
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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


def _local(fn: TaskFunction, tasks: Sequence[Task], workers: int, inline: bool) -> Iterator[tuple[int, Row]]:
    if inline:
        for i, task in enumerate(tasks):
            yield i, run_one(fn, task)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_one, fn, task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield futures[f], f.result()


def _dask(fn: TaskFunction, tasks: Sequence[Task], scheduler: Any) -> Iterator[tuple[int, Row]]:
    from dask.distributed import Client, as_completed
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = client.map(run_one, [fn] * len(tasks), list(tasks), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for f in as_completed(futures):
            yield index[f.key], f.result()
    finally:
        if client is not scheduler:
            client.close()


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
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        journal = Path(out_dir) / "rows.jsonl"
        if resume and journal.exists():
            for line in journal.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue                       # a line cut short by an interrupted run
                if not row.get("error"):
                    done[row["task"]] = row
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
    runs = (_local(fn, [tasks[i] for i in todo], workers, inline) if scheduler is None
            else _dask(fn, [tasks[i] for i in todo], scheduler))
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


def write_results(rows: Sequence[Row], out_dir: str | os.PathLike[str], columns: Sequence[str]) -> None:
    """``results.csv`` (the given columns first, then any others) and ``results.json``."""
    import csv
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = sorted({k for r in rows for k in r if k not in columns and k != "traceback"})
    header = list(columns) + extra
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k, "")) for k in header})
    with open(out / "results.json", "w") as f:
        json.dump(list(rows), f, indent=1, default=str)


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v
