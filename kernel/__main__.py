"""``python -m cellfleet.kernel -f CONNECTION_FILE``: start a cellfleet kernel."""

from __future__ import annotations


def main() -> None:
    from ipykernel.kernelapp import IPKernelApp

    from .kernel import CellfleetKernel

    IPKernelApp.launch_instance(kernel_class=CellfleetKernel)


if __name__ == "__main__":
    main()
