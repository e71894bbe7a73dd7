"""``cellfleet kernel ...``: install, list and remove cellfleet kernelspecs.

Installing the package already ships the default spec (``share/jupyter/kernels/cellfleet``);
this command writes more, e.g. one that connects to a running cluster::

    cellfleet kernel install [--user | --sys-prefix | --prefix DIR] [--name N]
                             [--display-name D] [--address HOST:PORT] [--token-file PATH]
                             [--num-cpus N] [--env KEY=VALUE ...]
    cellfleet kernel list
    cellfleet kernel uninstall [--name N] [-y]

``main(argv)`` takes the arguments after ``kernel`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

__all__ = ["DEFAULT_DISPLAY_NAME", "DEFAULT_NAME", "LOGOS", "kernel_spec", "main"]

DEFAULT_NAME = "cellfleet"
DEFAULT_DISPLAY_NAME = "Python 3 (cellfleet)"
_NAME_RE = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)
# The launcher's icons, shipped next to the default kernel.json and copied into every spec.
SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernelspec")
LOGOS = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")


def kernel_spec(*, display_name: str = DEFAULT_DISPLAY_NAME, address: str | None = None,
                num_cpus: float | None = None, token_file: str | None = None,
                env: dict[str, str] | None = None, executable: str | None = None) -> dict:
    """The ``kernel.json`` content of a cellfleet kernel."""
    spec_env = dict(env or {})
    if address:
        spec_env["CELLFLEET_ADDRESS"] = address
    if num_cpus is not None:
        spec_env["CELLFLEET_NUM_CPUS"] = f"{num_cpus:g}"
    if token_file:
        spec_env["CELLFLEET_TOKEN_FILE"] = token_file
    return {
        "argv": [executable or sys.executable, "-m", "cellfleet.kernel", "-f",
                 "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "env": spec_env,
        "metadata": {"debugger": True,
                     "cellfleet": {"address": address, "num_cpus": num_cpus}},
    }


class _UsageError(Exception):
    pass


def _check_address(address: str) -> str:
    host, _, port = address.removeprefix("cellfleet://").rpartition(":")
    if address in ("auto", "local"):
        return address
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _UsageError(f"--address {address!r} is not HOST:PORT (or 'auto')")
    return f"{host}:{port}"


def _install(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    if not _NAME_RE.match(args.name):
        raise _UsageError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' only")
    address = _check_address(args.address) if args.address else None
    if args.num_cpus is not None and args.num_cpus < 0:
        raise _UsageError("--num-cpus must be >= 0")
    if address not in (None, "local") and args.num_cpus is not None:
        raise _UsageError("--num-cpus belongs to a local runtime; a kernel that connects to "
                          "--address uses the cluster's CPUs")
    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--env {item!r} is not KEY=VALUE")
        env[key] = value
    token_file = os.path.abspath(args.token_file) if args.token_file else None
    if token_file and not os.path.isfile(token_file):
        raise _UsageError(f"--token-file {args.token_file}: no such file")
    display_name = args.display_name
    if display_name is None:
        display_name = DEFAULT_DISPLAY_NAME if address is None else \
            f"{DEFAULT_DISPLAY_NAME} @ {address}"
    spec = kernel_spec(display_name=display_name, address=address, num_cpus=args.num_cpus,
                       token_file=token_file, env=env)
    prefix = args.prefix
    if args.sys_prefix:
        prefix = sys.prefix
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=2)
        for logo in LOGOS:
            shutil.copyfile(os.path.join(SPEC_DIR, logo), os.path.join(tmp, logo))
        dest = KernelSpecManager().install_kernel_spec(tmp, args.name, user=args.user,
                                                       prefix=prefix)
    print(f"Installed kernelspec {args.name} ({display_name}) in {dest}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().get_all_specs()
    found = False
    for name, info in sorted(specs.items()):
        spec = info.get("spec", {})
        if "cellfleet.kernel" not in spec.get("argv", []):
            continue
        found = True
        env = spec.get("env") or {}
        target = env.get("CELLFLEET_ADDRESS") or "local runtime"
        print(f"{name:<24} {spec.get('display_name', ''):<40} {target:<22} "
              f"{info.get('resource_dir', '')}")
    if not found:
        print("No cellfleet kernelspec is installed (run 'cellfleet kernel install').")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        path = ksm.get_kernel_spec(args.name).resource_dir
    except NoSuchKernel:
        raise _UsageError(f"no kernelspec named {args.name!r}") from None
    if not args.yes and sys.stdin.isatty():
        answer = input(f"Remove the kernelspec {args.name} at {path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    shutil.rmtree(path)
    print(f"Removed kernelspec {args.name} ({path})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellfleet kernel",
                                     description="Manage cellfleet Jupyter kernelspecs.")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help="install a cellfleet kernelspec")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="install for the current user (~/.local/share/jupyter)")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"install into this Python's prefix ({sys.prefix})")
    where.add_argument("--prefix", default=None, metavar="DIR",
                       help="install into DIR/share/jupyter/kernels")
    install.add_argument("--name", default=DEFAULT_NAME,
                         help=f"the kernelspec's name (default {DEFAULT_NAME})")
    install.add_argument("--display-name", default=None,
                         help=f"the name shown in Jupyter (default '{DEFAULT_DISPLAY_NAME}')")
    install.add_argument("--address", default=None, metavar="HOST:PORT",
                         help="connect to the cluster at HOST:PORT (or 'auto') instead of "
                              "starting a local runtime")
    install.add_argument("--token-file", default=None, metavar="PATH",
                         help="the cluster's token file (for --address on another session)")
    install.add_argument("--num-cpus", type=float, default=None,
                         help="CPUs of the kernel's local runtime (default: all)")
    install.add_argument("--env", action="append", metavar="KEY=VALUE",
                         help="an environment variable for the kernel (repeatable)")
    sub.add_parser("list", help="list the installed cellfleet kernelspecs")
    uninstall = sub.add_parser("uninstall", help="remove a kernelspec")
    uninstall.add_argument("--name", default=DEFAULT_NAME)
    uninstall.add_argument("-y", "--yes", action="store_true", help="do not ask")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``cellfleet kernel ARGS``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    commands = {"install": _install, "list": _list, "uninstall": _uninstall}
    try:
        return commands[args.command](args)
    except _UsageError as exc:
        print(f"cellfleet kernel {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cellfleet kernel {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
