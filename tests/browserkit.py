"""A real headless Chromium for page tests, driven by chromedriver over plain WebDriver HTTP.

    with Browser.start(tmp_path) as browser:       # skips the test when no browser is installed
        browser.open(page.as_uri())
        browser.wait_for("return document.body.dataset.ready === '1'")
        browser.hover("#ckpt-3"); browser.screenshot(tmp_path / "page.png")
        assert browser.console_errors() == []

Networking is cut off for the page: every http(s) request goes to a dead proxy and every host name
fails to resolve, so a page that tried to fetch anything would fail (and the tests also assert
that the page made no resource request at all). No Python package is needed: Debian's
``chromium`` and ``chromium-driver`` and the standard library.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "no headless browser: install one with `apt-get install -y chromium chromium-driver` (CI does)"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    # the page must not reach anything: a dead proxy for every request, no name resolves
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    def __init__(self, base: str, session: str) -> None:
        self.base, self.session = base, session

    @classmethod
    @contextmanager
    def start(cls, profile: Path) -> Iterator[Browser]:
        found = find_browser()
        if found is None:
            pytest.skip(INSTALL_HINT)
        chromium, chromedriver = found
        port = _free_port()
        driver = subprocess.Popen(
            [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _call("GET", f"{base}/status")
                    break
                except (urllib.error.URLError, ConnectionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            caps = {
                "browserName": "chrome",
                "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {"binary": chromium, "args": [*FLAGS, f"--user-data-dir={profile}"]},
            }
            session = _call("POST", f"{base}/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
            browser = cls(base, session)
            try:
                yield browser
            finally:
                _call("DELETE", f"{base}/session/{session}")
        finally:
            driver.terminate()
            driver.wait(10)

    def _do(self, method: str, path: str, body: object = None) -> Any:
        return _call(method, f"{self.base}/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self._do("POST", "/url", {"url": url})

    def run(self, script: str, *args: object) -> Any:
        """Run ``script`` (a function body: ``return ...``) in the page."""
        return self._do("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, script: str, timeout: float = 30) -> float:
        """Poll ``script`` until it returns true; returns the seconds it took."""
        start = time.monotonic()
        while not self.run(script):
            if time.monotonic() - start > timeout:
                raise AssertionError(f"page never satisfied: {script}")
            time.sleep(0.05)
        return time.monotonic() - start

    def hover(self, css: str | dict) -> None:
        """Move the mouse onto the first element ``css`` matches (or an element ``run`` returned)."""
        element = (
            css if isinstance(css, dict) else self._do("POST", "/element", {"using": "css selector", "value": css})
        )
        move = {"type": "pointerMove", "duration": 0, "origin": {_ELEMENT: element[_ELEMENT]}, "x": 0, "y": 0}
        self._do(
            "POST",
            "/actions",
            {
                "actions": [
                    {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [move]}
                ]
            },
        )

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._do("GET", "/screenshot")))

    def console_errors(self) -> list[str]:
        """SEVERE entries of the page's console (errors, failed loads) since the last call."""
        entries = self._do("POST", "/se/log", {"type": "browser"})
        return [e["message"] for e in entries if e.get("level") == "SEVERE"]


def _call(method: str, url: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}").get("value")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"webdriver {method} {url}: {exc.read().decode(errors='replace')[:500]}") from None
