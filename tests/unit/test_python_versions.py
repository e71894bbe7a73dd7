"""``requires-python`` is true: every module compiles on the oldest Python declared, and every
name it imports from the standard library exists there (``typing.Self``, ``enum.StrEnum``...).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("runtime", "kernel", "extension", "widgets")

CHECK = r"""
import ast, importlib, sys
problems = []
stdlib = sys.stdlib_module_names
for path in sys.argv[1:]:
    source = open(path, encoding="utf-8").read()
    try:
        tree = compile(source, path, "exec", ast.PyCF_ONLY_AST)
        compile(tree, path, "exec")
    except SyntaxError as exc:
        problems.append(f"{path}:{exc.lineno}: {exc.msg}")
        continue
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top not in stdlib:
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                problems.append(f"{path}:{node.lineno}: no module {node.module}")
                continue
            for alias in node.names:
                if alias.name != "*" and not hasattr(module, alias.name):
                    problems.append(f"{path}:{node.lineno}: {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in ("typing", "enum", "datetime", "asyncio", "itertools"):
                module = importlib.import_module(node.value.id)
                if not hasattr(module, node.attr):
                    problems.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
print("\n".join(problems))
"""


def _oldest_python() -> tuple[str, str | None]:
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', pyproject).group(1)
    pyenv = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")
    for python in [*sorted(glob.glob(pyenv)), shutil.which(f"python{version}")]:
        if python and subprocess.run([python, "-c", ""], capture_output=True).returncode == 0:
            return version, python
    return version, None


def test_every_module_works_on_the_oldest_declared_python() -> None:
    version, python = _oldest_python()
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    files = [str(p) for d in PACKAGE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    result = subprocess.run([python, "-c", CHECK, *files], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"not available on Python {version}:\n{result.stdout}"
