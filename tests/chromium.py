"""A real headless Chromium for the tests, driven over the DevTools protocol (no driver, no download).

Debian's ``chromium`` package provides the browser (``.ci/run`` installs it). It binds its DevTools
endpoint to 127.0.0.1 on a port it picks, and is stopped by its PID when the ``with`` block ends.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class HeadlessChromium:
    """``with HeadlessChromium() as browser: browser.open(url); browser.evaluate("1 + 1")``."""

    def __init__(self, executable: str | None = None, size: tuple[int, int] = (1000, 700)) -> None:
        self.executable = executable or chromium_path()
        if self.executable is None:
            raise RuntimeError("no Chromium found: install Debian's chromium package (see .ci/run)")
        self.size = size
        self._ids = itertools.count(1)

    def __enter__(self) -> HeadlessChromium:
        from websockets.sync.client import connect

        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        self.process = subprocess.Popen(
            [
                self.executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                f"--window-size={self.size[0]},{self.size[1]}",
                f"--user-data-dir={self._profile.name}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(self._profile.name) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Chromium did not start (exit code {self.process.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().splitlines()[0])
            self.socket = connect(f"ws://127.0.0.1:{port}{self._page_path(port)}", max_size=None)
            self.call("Page.enable")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
        self._stop()

    def _stop(self) -> None:
        self.process.terminate()  # by PID, whatever happened
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._profile.cleanup()

    @staticmethod
    def _page_path(port: int) -> str:
        import httpx

        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        return "/" + page["webSocketDebuggerUrl"].split("/", 3)[3]

    def call(self, method: str, **params: Any) -> dict:
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:  # events arrive in between; the reply carries our id
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} still false after {timeout} s")
            time.sleep(0.2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
