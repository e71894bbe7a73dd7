"""cellfleet's jupyter-server extension: the live dashboard's JSON API and pages.

Enabled by installing the package (``etc/jupyter/jupyter_server_config.d/cellfleet.json``), or
with ``jupyter server --ServerApp.jpserver_extensions='{"cellfleet.extension": True}'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["jupyter_routes"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cellfleet.extension"}]


def jupyter_routes(base_url: str) -> list[tuple]:
    """The dashboard's routes with Jupyter's authentication and authorization."""
    import tornado.web
    from jupyter_server.auth.decorator import authorized
    from jupyter_server.base.handlers import APIHandler, AuthenticatedFileHandler, JupyterHandler

    from .handlers import routes

    class Api(APIHandler):
        auth_resource = "cellfleet"

    class Page(JupyterHandler):
        auth_resource = "cellfleet"

    class Static(AuthenticatedFileHandler):
        auth_resource = "cellfleet"

    def wrap(get: Any) -> Any:
        return tornado.web.authenticated(authorized(get))

    return routes(base_url, Api, Page, wrap, Static)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from tornado.ioloop import IOLoop

    from .data import sample_stores
    from .discovery import list_clusters

    web_app = serverapp.web_app
    base_url = web_app.settings.get("base_url", "/")
    web_app.add_handlers(".*$", jupyter_routes(base_url))
    # the object stores' history, kept from the server's start (the objects page draws it)
    web_app.settings["cellfleet_sampler"] = IOLoop.current().asyncio_loop.create_task(
        sample_stores(list_clusters))
    serverapp.log.info("cellfleet dashboard at %scellfleet/dashboard/", base_url)


def _unload_jupyter_server_extension(serverapp: Any) -> None:
    sampler = serverapp.web_app.settings.pop("cellfleet_sampler", None)
    if sampler is not None:
        sampler.cancel()


# jupyter_server < 2 name
load_jupyter_server_extension = _load_jupyter_server_extension
