"""The cellfleet Jupyter kernel: IPython with the runtime built in, and its magics.

``python -m cellfleet.kernel -f CONNECTION_FILE`` starts it (the ``cellfleet`` kernelspec
does); ``cellfleet kernel install`` writes more kernelspecs. Workers import
``cellfleet.kernel.remote_exec`` to run ``%%remote`` cells, so importing this package must
stay cheap: the kernel class lives in ``cellfleet.kernel.kernel``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CellfleetKernel"]


def __getattr__(name: str) -> Any:
    if name == "CellfleetKernel":
        from .kernel import CellfleetKernel

        return CellfleetKernel
    raise AttributeError(name)
