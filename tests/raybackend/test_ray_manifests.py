"""The KubeRay + JupyterHub configuration in docs/ray-backend.md: every manifest it shows is
valid against a schema written from KubeRay's CRD and Kubernetes' types (offline), and the
pieces point at each other (service names, ports, the token's secret, Ray's version)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).parent.parent.parent
DOC = ROOT / "docs" / "ray-backend.md"
SCHEMAS = json.loads((Path(__file__).parent / "manifest_schemas.json").read_text())
BLOCK = re.compile(r"```yaml\n# (?:manifest|values): ([a-z0-9-]+)\n(.*?)```", re.S)


def _blocks() -> dict[str, dict]:
    found = {name: yaml.safe_load(body) for name, body in BLOCK.findall(DOC.read_text())}
    assert set(found) == {"secret", "raycluster", "networkpolicy", "zero-to-jupyterhub"}, found
    return found


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = {**SCHEMAS, "$ref": f"#/{kind}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("kind", ["secret", "raycluster", "networkpolicy", "zero-to-jupyterhub"])
def test_each_manifest_is_valid(kind: str) -> None:
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in _validator(kind).iter_errors(_blocks()[kind])]
    assert not errors, errors


def test_the_schema_refuses_what_kuberay_would() -> None:
    cluster = _blocks()["raycluster"]
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert not _validator("raycluster").is_valid(typo)
    no_image = copy.deepcopy(cluster)
    del no_image["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert not _validator("raycluster").is_valid(no_image)
    wrong_version = copy.deepcopy(cluster)
    wrong_version["apiVersion"] = "ray.io/v1alpha1"
    assert not _validator("raycluster").is_valid(wrong_version)


def test_the_pieces_point_at_each_other() -> None:
    blocks = _blocks()
    cluster, hub = blocks["raycluster"], blocks["zero-to-jupyterhub"]
    policy, secret = blocks["networkpolicy"], blocks["secret"]
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    service = f"{name}-head-svc.{namespace}.svc.cluster.local"  # KubeRay's head service
    env = hub["singleuser"]["extraEnv"]
    assert env["CELLFLEET_BACKEND"] == "ray"
    assert env["RAY_ADDRESS"] == f"ray://{service}:10001"
    assert env["CELLFLEET_RAY_DASHBOARD"] == f"http://{service}:8265"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_ports = {p["containerPort"] for p in head["ports"]}
    assert {6379, 8265, 10001} <= head_ports
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert {8265, 10001} <= allowed
    assert policy["spec"]["podSelector"]["matchLabels"]["ray.io/cluster"] == name
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"]
                   for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]
                                 ["workerGroupSpecs"]]
                   for c in group["template"]["spec"]["containers"]
                   for e in c.get("env", ()) if "valueFrom" in e}
    secret_refs.add(env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"])
    assert secret_refs == {secret["metadata"]["name"]}
    pinned = re.search(r'"ray\[default\]>=([0-9.]+),', (ROOT / "pyproject.toml").read_text())
    assert pinned and cluster["spec"]["rayVersion"].startswith(pinned.group(1))
    assert f"FROM rayproject/ray:{cluster['spec']['rayVersion']}-py311" in DOC.read_text()
