"""Fixtures for the dashboard: pytest-jupyter's server with the cellfleet extension enabled."""

from __future__ import annotations

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"cellfleet.extension": True}}}


@pytest.fixture
def jp_base_url():
    return "/user/alice/"
