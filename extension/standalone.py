"""``cellfleet dashboard``: the same API and pages without Jupyter, on 127.0.0.1 with a token.

Wire into ``runtime/cli.py`` as a subcommand calling ``main(argv)`` (or ``serve(...)``).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import secrets
from typing import Any

import tornado.web

from .data import sample_stores
from .discovery import ClusterInfo, cluster_id, list_clusters
from .handlers import routes

__all__ = ["make_app", "main", "serve"]

COOKIE = "cellfleet_dashboard_token"


class _TokenHandler(tornado.web.RequestHandler):
    """Accepts ``?token=``, ``Authorization: token …`` or the cookie the first one sets."""

    dashboard_token: str = ""

    def get_current_user(self) -> str | None:
        given = self.get_query_argument("token", None)
        if given is None:
            auth = self.request.headers.get("Authorization", "")
            if auth.lower().startswith("token "):
                given = auth[6:].strip()
        from_query = given is not None
        if given is None:
            given = self.get_signed_cookie(COOKIE, max_age_days=1)
            given = given.decode() if given else None
        if given and hmac.compare_digest(given, self.dashboard_token):
            if from_query:
                self.set_signed_cookie(COOKIE, given, httponly=True, samesite="Strict")
            return "dashboard"
        return None


class _StaticHandler(tornado.web.StaticFileHandler):
    pass


def make_app(token: str, address: str | None = None) -> tornado.web.Application:
    """The dashboard app; with ``address`` it shows only that cluster (which must be found by
    discovery on this machine, or have ``CELLFLEET_TOKEN_FILE`` set)."""
    clusters = None
    if address is not None:

        def clusters() -> list[ClusterInfo]:
            found = [c for c in list_clusters() if c.address == address]
            if not found and os.environ.get("CELLFLEET_TOKEN_FILE"):
                found = [ClusterInfo(cluster_id(address), address,
                                     os.environ["CELLFLEET_TOKEN_FILE"], source="address")]
            return found

    class Base(_TokenHandler):
        dashboard_token = token

    def wrap(get: Any) -> Any:
        async def checked(self, *args):
            if self.current_user is None:
                raise tornado.web.HTTPError(403, "a token is required")
            await get(self, *args)

        return checked

    return tornado.web.Application(routes("/", Base, Base, wrap, _StaticHandler),
                                   cookie_secret=secrets.token_hex(32),
                                   cellfleet_clusters=clusters)


async def serve(address: str | None = None, port: int = 8266, host: str = "127.0.0.1",
                token: str | None = None) -> None:
    token = token or secrets.token_urlsafe(24)
    app = make_app(token, address)
    source = app.settings.get("cellfleet_clusters") or list_clusters
    sampler = asyncio.ensure_future(sample_stores(source))  # the objects page's history
    server = app.listen(port, host)
    bound = next(iter(server._sockets.values())).getsockname()[1]
    print(f"cellfleet dashboard: http://{host}:{bound}/cellfleet/dashboard/?token={token}",
          flush=True)
    if address is None:
        for cluster in list_clusters():
            print(f"  cluster {cluster.id} at {cluster.address}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        sampler.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cellfleet dashboard",
                                     description="serve the cellfleet dashboard")
    parser.add_argument("--address", default=None, help="GCS address (default: every cluster)")
    parser.add_argument("--port", type=int, default=8266)
    parser.add_argument("--token", default=None, help="default: a random token")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.address, args.port, token=args.token))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
