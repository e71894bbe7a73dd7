"""The API under a server that allows no unauthenticated access at all."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"cellfleet.extension": True},
                          "allow_unauthenticated_access": False}}


async def test_api_works_with_auth_and_refuses_without(jp_fetch, http_server_client,
                                                       jp_base_url, cluster):
    response = await jp_fetch("cellfleet", "api", "clusters")
    clusters = json.loads(response.body)["clusters"]
    assert cluster["gcs_address"] in [c["address"] for c in clusters]
    anonymous = await http_server_client.fetch(f"{jp_base_url}cellfleet/api/clusters",
                                               raise_error=False)
    assert anonymous.code == 403
