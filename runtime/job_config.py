"""``JobConfig``: settings of one job (driver), passed as ``init(job_config=...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["JobConfig"]


class JobConfig:
    """Ray's job settings: ``code_search_path`` (directories put on the workers' import
    path), ``ray_namespace`` (the namespace when ``init`` gets none), ``metadata`` and
    ``runtime_env`` (kept, not acted on)."""

    def __init__(self, *, code_search_path: Sequence[str] | None = None,
                 ray_namespace: str | None = None, metadata: dict[str, str] | None = None,
                 runtime_env: dict[str, Any] | None = None, **_ignored: Any) -> None:
        if isinstance(code_search_path, str) or not all(
                isinstance(p, str) for p in code_search_path or ()):
            raise TypeError("code_search_path must be a list of directory paths")
        self.code_search_path = list(code_search_path or ())
        self.ray_namespace = ray_namespace
        self.metadata = dict(metadata or {})
        self.runtime_env = dict(runtime_env or {})

    def set_metadata(self, key: str, value: str) -> None:
        self.metadata[key] = value

    def set_ray_namespace(self, ray_namespace: str) -> None:
        self.ray_namespace = ray_namespace

    def set_runtime_env(self, runtime_env: dict[str, Any] | None, **_ignored: Any) -> None:
        self.runtime_env = dict(runtime_env or {})

    def __repr__(self) -> str:
        return (f"JobConfig(code_search_path={self.code_search_path!r}, "
                f"ray_namespace={self.ray_namespace!r})")
