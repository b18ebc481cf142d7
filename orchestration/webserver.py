"""Start `dagster-webserver` for a project and talk to it over GraphQL, as the UI does.

Used by the webserver test, the screenshot script and the overhead benchmark.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from orchestration.dvc_cli import venv_env

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""
RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
STALENESS = "{ assetNodes { assetKey { path } staleStatus staleCauses { reason category } } }"
LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { ... on RepositoryLocation { repositories { name } } } } } } }"""
RELOAD = """mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename ... on WorkspaceLocationEntry { name } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DagsterClient:
    """The GraphQL calls the UI makes for materializing assets and showing staleness."""

    def __init__(self, url: str):
        self.url = url

    def query(self, query: str, **variables) -> dict:
        resp = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def location(self) -> tuple[str, str]:
        entry = self.query(LOCATIONS)["workspaceOrError"]["locationEntries"][0]
        return entry["name"], entry["locationOrLoadError"]["repositories"][0]["name"]

    def materialize(self, keys: list[str], run_config: dict | None = None) -> str:
        """What the Materialize button sends: the implicit asset job with an asset selection."""
        location, repo = self.location()
        params = {
            "selector": {
                "repositoryLocationName": location,
                "repositoryName": repo,
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": [k]} for k in keys],
                "assetCheckSelection": [],
            },
            "mode": "default",
            "executionMetadata": {"tags": []},
            "runConfigData": run_config or {},
        }
        result = self.query(LAUNCH, params=params)["launchPipelineExecution"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launch failed: {result}")
        return result["run"]["runId"]

    def wait(self, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.query(RUN_STATUS, id=run_id)["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(0.5)
        raise TimeoutError(f"run {run_id} did not finish in {timeout}s")

    def staleness(self) -> dict[str, tuple[str, list[str]]]:
        nodes = self.query(STALENESS)["assetNodes"]
        return {
            "/".join(n["assetKey"]["path"]): (
                n["staleStatus"],
                [c["reason"] for c in n["staleCauses"]],
            )
            for n in nodes
        }

    def reload(self) -> None:
        self.query(RELOAD, name=self.location()[0])


@contextmanager
def webserver(root: Path, dagster_home: Path, port: int | None = None):
    """Run dagster-webserver on 127.0.0.1 for the project at `root`; yield a client."""
    port = port or free_port()
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        # No daemon here: launch runs directly instead of queueing them.
        (dagster_home / "dagster.yaml").write_text(
            "run_coordinator:\n  module: dagster._core.run_coordinator\n"
            "  class: DefaultRunCoordinator\ntelemetry:\n  enabled: false\n"
        )
    bindir = Path(sys.executable).parent
    env = {**venv_env(), "DAGSTER_HOME": str(dagster_home), "PIPELINE_ROOT": str(root)}
    log = open(dagster_home / "webserver.log", "w")
    proc = subprocess.Popen(
        [
            str(bindir / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "orchestration.definitions",
            "-d",
            str(root),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"webserver exited: {(dagster_home / 'webserver.log').read_text()}"
                )
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("dagster-webserver did not start in 180 s")
            time.sleep(0.5)
        yield DagsterClient(url)
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the webserver's whole process group (it may have exited already)."""
    for sig, wait in ((15, 20), (9, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
