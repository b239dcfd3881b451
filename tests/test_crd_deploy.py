"""deploy/ and the Containerfile checked without a cluster or a container engine: the
kustomization lists every manifest, the Deployment's security context, probes and
arguments are what the code serves and parses, and the image recipe copies every
package, runs as the Deployment's non-root user and starts an importable entry point.
(Applying the manifests is tests/kube/test_ctj_manifests.py.)"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.devcluster.launcher import HOW_TO_BUILD, find_binaries
from controller.serve import add_serve_command, manager_options

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = ROOT / "Containerfile"


def kustomized() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [
        doc
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((DEPLOY / resource).read_text())
        if doc
    ]


def deployment() -> dict[str, Any]:
    return next(d for d in kustomized() if d["kind"] == "Deployment")


def test_kustomization_lists_every_manifest_but_the_kwok_test_stages() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    present = {
        str(p.relative_to(DEPLOY))
        for p in DEPLOY.rglob("*.yaml")
        # KWOK's stages belong to the dev cluster; the RayCluster needs KubeRay's CRD and
        # is applied on its own (deploy/ray/README.md).
        if p.name != "kustomization.yaml" and not {"kwok", "ray"} & set(p.parts)
    }
    assert listed == present


def kubectl() -> str:
    """kubectl v1.37 from the control-plane build (tools/controlplane/build.sh), else PATH."""
    built = find_binaries()
    found = str(built / "kubectl") if built else shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(HOW_TO_BUILD)
        pytest.skip(HOW_TO_BUILD)
    return found


def test_kubectl_kustomize_renders_the_same_objects() -> None:
    rendered = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True
    ).stdout
    names = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered))
    assert names == sorted((d["kind"], d["metadata"]["name"]) for d in kustomized())


def test_deployment_is_two_non_root_read_only_replicas_with_probes_and_requests() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    accounts = [d["metadata"]["name"] for d in kustomized() if d["kind"] == "ServiceAccount"]
    assert pod["serviceAccountName"] in accounts


def test_deployment_arguments_parse_and_match_the_ports() -> None:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    options = manager_options(parser.parse_args(container["args"]))
    assert options.probe_port == container["ports"][0]["containerPort"]
    assert options.lease is not None and options.reconcile_ctjs
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_containerfile_copies_every_package_and_pins_its_base() -> None:
    steps = instructions()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    wanted = {p.rstrip("*") for p in packages["packages"]["find"]["include"]}
    copied = set()
    for kind, args in steps:
        if kind == "COPY" and not args.startswith("--from"):
            *sources, _target = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source.rstrip("/"))
    assert wanted <= copied
    (base,) = {a.split("=", 1)[1] for k, a in steps if k == "ARG" and a.startswith("PYTHON_IMAGE")}
    assert ":" in base and not base.endswith(":latest")


def test_containerfile_runs_the_serve_entry_point_as_the_deployments_user() -> None:
    steps = dict(instructions())
    pod = deployment()["spec"]["template"]["spec"]
    user, group = steps["USER"].split(":")
    assert (int(user), int(group)) == (
        pod["securityContext"]["runAsUser"],
        pod["securityContext"]["runAsGroup"],
    )
    entrypoint = json.loads(steps["ENTRYPOINT"])  # exec form: signals reach Python
    assert entrypoint[:2] == ["python", "-m"]
    module = importlib.import_module(entrypoint[2])
    assert callable(module.main)
    (container,) = pod["containers"]
    assert int(steps["EXPOSE"]) == container["ports"][0]["containerPort"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and "!controller/" in ignored
