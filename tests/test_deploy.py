"""The install and the service definitions, checked against the code they run: the built
wheel installs into a fresh venv and serves (no checkout on its path); the systemd units pass
``systemd-analyze verify``; the Kubernetes manifests render with ``kubectl kustomize`` and
their probes, ports, config and secret variables match what the router really serves and
reads. Each tool-dependent test skips when its tool is missing."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from hotcold.serving import free_port
from router.app import create_app
from router.config import ENVIRONMENT, RouterConfig, build_config
from tests.conftest import StubFactory
from tests.support import ROOT, wait_for

DEPLOY = ROOT / "deploy"


def _kubectl_with_kustomize_v4() -> str | None:
    """kubectl whose built-in kustomize reads these manifests (v4+: ``patches``, ``labels``;
    Debian's kubernetes-client 1.20 carries v2 and is skipped rather than failed)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    version = subprocess.run(
        [kubectl, "version", "--client"], capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"Kustomize Version: v(\d+)", version)
    return kubectl if match is not None and int(match.group(1)) >= 4 else None


KUBECTL = _kubectl_with_kustomize_v4()
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


# ---- the wheel ---------------------------------------------------------------------------


def build_wheel(out: Path) -> Path:
    """The wheel, as ``python -m build`` makes it, without fetching a build environment (the
    venv's setuptools; CI must not depend on the network here)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, cwd=out, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("hotcold-*.whl")
    return wheel


def fresh_venv(where: Path) -> Path:
    """A new venv whose dependencies come from this venv's site-packages (a path entry, not a
    site dir: its editable install of this checkout is not processed), so the test installs
    offline; hotcold itself comes only from the wheel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def install_wheel(tmp_path: Path) -> Path:
    """Build the wheel, check what it carries, install it alone into a fresh venv; its
    ``hotcold`` script."""
    wheel = build_wheel(tmp_path)
    names = subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(wheel)], check=True, capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    assert "router/static/dashboard.html" in names and "tests/" not in names
    python = fresh_venv(tmp_path / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    where = subprocess.run(
        [str(python), "-c", "import router, hotcold_app; print(router.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert where.startswith(str(tmp_path / "venv")), where  # the wheel's, not the checkout's
    return tmp_path / "venv" / "bin" / "hotcold"


def serve(hotcold: Path, config: Path, port: int, cloud: str, log: Path) -> subprocess.Popen[bytes]:
    """``hotcold serve --config FILE`` as an operator runs it, outside the checkout; its
    log to a file (a pipe no one reads would stop it once full)."""
    with open(log, "ab") as output:
        return subprocess.Popen(
            [str(hotcold), "serve", "--config", str(config), "--port", str(port),
             "--cloud-endpoint", cloud],
            cwd=config.parent, stdout=subprocess.DEVNULL, stderr=output,
            env={k: v for k, v in os.environ.items() if not k.startswith("HOTCOLD_")},
        )  # fmt: skip


async def test_the_built_wheel_installs_into_a_fresh_venv_and_serves(
    tmp_path: Path, stub: StubFactory
) -> None:
    hotcold = await asyncio.to_thread(install_wheel, tmp_path)
    cloud = await stub()
    port = free_port()
    config = tmp_path / "router.yaml"
    shutil.copy(ROOT / "configs" / "router.yaml", config)
    log = tmp_path / "serve.log"
    process = serve(hotcold, config, port, cloud.url, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert process.poll() is None, log.read_text(errors="replace")[-2000:]
                try:
                    async with session.get(url + "/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout_s=30, message="hotcold serve from the wheel")
            body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
                assert (await response.json())["choices"][0]["message"]["content"]
            async with session.get(url + "/admin/dashboard") as response:
                assert response.status == 200 and "<svg" in await response.text()
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 20)
    assert process.returncode == 0


# ---- systemd -----------------------------------------------------------------------------


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", ["hotcold-router.service", "hotcold-edge.service"])
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    assert "ExecStart=/opt/hotcold/bin/hotcold " in text
    # verify checks that ExecStart's binary exists: point it at this venv's console script.
    hotcold = Path(sys.executable).parent / "hotcold"
    (tmp_path / unit).write_text(text.replace("/opt/hotcold/bin/hotcold", str(hotcold)))
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(tmp_path / unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes",
                      "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service"):  # fmt: skip
        assert hardening in text, hardening


# ---- Kubernetes --------------------------------------------------------------------------


def render(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / "kubernetes" / overlay)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def router_paths() -> set[str]:
    app = create_app(RouterConfig())
    return {
        info["path"]
        for resource in app.router.resources()
        for info in [resource.get_info()]
        if "path" in info
    }


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl with kustomize v4 or later")
@pytest.mark.parametrize("overlay", ["base", "with-edge"])
def test_kubernetes_manifests_render_and_match_the_router(overlay: str) -> None:
    documents = render(overlay)
    deployment = one(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (router,) = [c for c in pod["containers"] if c["name"] == "router"]
    ports = {port["name"]: port["containerPort"] for port in router["ports"]}

    # The config the pod mounts validates, and the router listens where the pod says.
    config_map = one(documents, "ConfigMap")
    (mount,) = [m for m in router["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    config_path = router["args"][router["args"].index("--config") + 1]
    assert Path(config_path).parent == Path(mount["mountPath"])
    document = yaml.safe_load(config_map["data"][Path(config_path).name])
    config = build_config(document)
    assert config.server.host == "0.0.0.0" and ports["http"] == config.server.port
    # secrets never in the file (it would override the Secret-fed variables)
    assert config.admin.token is None and config.fleet.redis_url is None

    # Probes: readiness on /readyz, liveness on /healthz, both routes the router serves.
    paths = router_paths()
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert router["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = router[probe]["httpGet"]
        assert get["path"] in paths and get["port"] in ports
    # SIGTERM comes while the Service may still send new connections: the router waits in
    # preStop before it stops listening, and the wait and the drain fit in the grace period.
    (pause, seconds) = router["lifecycle"]["preStop"]["exec"]["command"]
    assert pause == "sleep" and int(seconds) > 0
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > int(seconds) + config.server.shutdown_timeout_s

    # Every variable fed from a Secret is one the router reads; the Service targets the port.
    secret_env = {e["name"] for e in router["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_env == {"HOTCOLD_ADMIN_TOKEN", "HOTCOLD_REDIS_URL"}
    assert {e["name"] for e in router["env"]} <= set(ENVIRONMENT)
    (key_file,) = [m for m in router["volumeMounts"] if m["name"] == "upstream-keys"]
    assert config.cloud.api_key_file is not None
    assert Path(config.cloud.api_key_file).parent == Path(key_file["mountPath"])
    service = one(documents, "Service")
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    if overlay == "with-edge":
        (edge,) = [c for c in pod["containers"] if c["name"] == "edge"]
        edge_port = int(edge["args"][edge["args"].index("--port") + 1])
        assert config.edge.endpoints == (f"http://127.0.0.1:{edge_port}",)
        assert edge["livenessProbe"]["httpGet"]["port"] == edge_port
        assert edge["resources"]["limits"]["nvidia.com/gpu"] == 1
