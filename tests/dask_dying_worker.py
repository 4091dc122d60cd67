"""Dask worker preload for the e2e test of a worker that dies mid-task (`dask worker --preload <this file>`).

The worker kills itself (SIGKILL, as the kernel's OOM killer would) a moment after it starts executing
its first task, so the scheduler sees a worker lost with work in flight, never a clean shutdown.
"""

from __future__ import annotations

import os
import signal
import threading

from distributed import WorkerPlugin

DELAY_S = 0.2  # long enough for the task to be under way, short against any task of the stage


class DieMidTask(WorkerPlugin):
    def __init__(self) -> None:
        self.armed = True

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and self.armed:
            self.armed = False
            threading.Timer(DELAY_S, os.kill, (os.getpid(), signal.SIGKILL)).start()


async def dask_setup(worker) -> None:
    await worker.plugin_add(DieMidTask(), name="die-mid-task")
