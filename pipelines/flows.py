"""Prefect plumbing shared by the stages that fan work out per session, and every stage's entry point.

Prefect is imported where a task runner is made, not here: it takes about 2 s of a 2-core CPU to import,
which the eight stages that fan nothing out (and every `dvc repro` of them) would otherwise pay.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from reactdiff.errors import UserError

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture
    from prefect.task_runners import TaskRunner


def worker_count(requested: int) -> int:
    """``0`` means one worker per CPU core available to this process."""
    if requested > 0:
        return requested
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS, Windows
        return max(os.cpu_count() or 1, 1)


def make_task_runner(kind: str, workers: int, dask_address: str | None = None) -> TaskRunner[Any]:
    """``thread`` (default; numpy, scipy and torch release the GIL), ``process``, or ``dask``: on the
    scheduler at ``dask_address`` (or ``PREFECT_DASK_ADDRESS``), else on a local cluster started here.
    A cluster's workers must see the project's folder at the same path (they read and write its files)."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    n = worker_count(workers)
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=n)
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=n)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise SystemExit(
                "runner 'dask' needs the optional dependencies: pip install -c constraints.txt -e '.[dask]'"
            ) from None
        address = dask_address or os.environ.get("PREFECT_DASK_ADDRESS")
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": n,
                "threads_per_worker": 1,
                "dashboard_address": None,
                "local_directory": tempfile.mkdtemp(prefix="reactdiff-dask-"),
            }
        )
    raise ValueError(f"unknown task runner {kind!r}: use thread, process or dask")


def gather(futures: Iterable[PrefectFuture], desc: str) -> list[Any]:
    """Results of ``futures`` as they complete, with a progress bar on stderr."""
    from prefect.futures import as_completed

    futures = list(futures)
    results = []
    with tqdm(total=len(futures), desc=desc, unit="session", file=sys.stderr, dynamic_ncols=True) as bar:
        for future in as_completed(futures):
            results.append(future.result())
            bar.update(1)
    return results


def _stop_children() -> None:
    """Terminate every process this one started (Prefect's temporary API server, pool workers)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def run_stage(main: Callable[[], None], stage: str) -> None:
    """A stage's entry point.

    A problem the user can fix (bad params, corpus, checkpoint) ends the stage with its one message,
    naming the file and the fix, instead of a traceback around it. SIGTERM is handled like Ctrl-C: the
    main thread unwinds (a stage's temporary output folder is removed on the way, so the previous output
    stays), every process the stage started is stopped (Prefect's temporary server would otherwise keep
    listening after its parent is gone) and the stage exits with status 130 at once, without waiting
    for the work threads to finish windows whose results would be thrown away.
    """

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    # Ctrl-C too, explicitly: a stage started from a background job inherits SIGINT ignored (POSIX
    # shells set it so for `cmd &`), and would otherwise run to the end through an interrupt.
    signal.signal(signal.SIGINT, interrupted)
    try:
        main()
    except UserError as err:
        raise SystemExit(f"[{stage}] {err}") from None
    except KeyboardInterrupt:
        _stop_children()
        print(f"[{stage}] interrupted; the previous outputs are kept: run it again", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


class StageTimer:
    """Prints what a stage read, wrote and how long it took: one line per stage in the ``dvc repro`` log."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.start = time.perf_counter()

    def done(self, read: str, wrote: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"[{self.stage}] read {read}; wrote {wrote}; took {elapsed:.1f} s", flush=True)
