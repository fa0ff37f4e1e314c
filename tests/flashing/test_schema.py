"""Every setup, machine, lease and deployment route is in the OpenAPI schema with its shapes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

# path -> {method: (has a request body, response statuses)}
ROUTES = {
    "/api/user/{username}/image_setup": {"post": (True, {"201"})},
    "/api/user/{username}/image_setups": {"get": (False, {"200"})},
    "/api/user/{username}/image_setup/{setup_uuid}": {
        "get": (False, {"200"}),
        "put": (True, {"200"}),
        "patch": (True, {"200"}),
        "delete": (False, {"204"}),
    },
    "/api/user/{username}/image_setup/{setup_uuid}/images": {
        "get": (False, {"200"}),
        "post": (True, {"201"}),
        "delete": (False, {"204"}),  # DELETE bodies are not in OpenAPI; ?image= is
    },
    "/api/machines": {"get": (False, {"200"})},
    "/api/machine": {"post": (True, {"201"})},
    "/api/machine/{mac}": {
        "get": (False, {"200"}),
        "put": (True, {"200"}),
        "patch": (True, {"200"}),
        "delete": (False, {"204"}),
    },
    "/api/machine/{mac}/lease": {"post": (True, {"200", "201"}), "delete": (False, {"204"})},
    "/api/machine/{mac}/boot": {"get": (False, {"200", "204"}), "post": (True, {"201"})},
    "/api/deployments": {"get": (False, {"200"})},
    "/api/deployment/{deployment_id}": {"get": (False, {"200"})},
    "/api/deployment/{deployment_id}/cancel": {"post": (False, {"200"})},
}


def test_the_schema_describes_every_route_with_its_shapes(user_client):
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path, methods in ROUTES.items():
        for method, (has_body, statuses) in methods.items():
            operation = schema["paths"][path][method]
            assert ("requestBody" in operation) == has_body, (method, path)
            assert statuses <= set(operation["responses"]), (method, path)
    unpin = schema["paths"]["/api/user/{username}/image_setup/{setup_uuid}/images"]["delete"]
    assert "image" in {p["name"] for p in unpin["parameters"]}
    components = schema["components"]["schemas"]
    assert {"image", "version", "sync", "target_disk"} <= set(
        components["FrozenImageInputRequest"]["properties"]
    )
    assert {"setup", "sync"} <= set(components["DeploymentInputRequest"]["properties"])
    deployment = components["DeploymentDetail"]["properties"]
    assert {"id", "state", "images", "events", "position"} <= set(deployment)
    assert components["MachineStateEnum"]["enum"] == [
        "available",
        "leased",
        "deploying",
        "error",
        "maintenance",
    ]
