"""What the JupyterLab tests share besides their fixtures (``conftest.py``): the server's
address and requests to it, notebooks to open, screenshots kept as artifacts."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = os.environ.get("CELLFLEET_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "extension" / "labextension"
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "cellfleet-lab-test"


@dataclass
class Lab:
    base: str  # http://127.0.0.1:PORT/
    root: Path  # the notebook directory
    log: Path

    def get(self, path: str) -> dict | list | None:
        request = urllib.request.Request(self.base + path,
                                         headers={"Authorization": f"token {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def url(self, path: str) -> str:
        return f"{self.base}{path}{'&' if '?' in path else '?'}token={TOKEN}"

    def kernel_id(self, notebook: str) -> str | None:
        sessions = self.get("api/sessions") or []
        return next((s["kernel"]["id"] for s in sessions
                     if s["path"].endswith(notebook) and s.get("kernel")), None)


def notebook_json(cells: list[str], kernel: str = "cellfleet") -> str:
    return json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {},
                   "outputs": [], "source": source} for source in cells],
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": kernel, "display_name": kernel,
                                    "language": "python"}},
    })


def screenshot(page, name: str, **options) -> Path:
    """Save a screenshot as a test artifact; returns its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), **options)
    return path
