"""A local ``dagster dev`` deployment, driven over GraphQL the way the Dagster UI drives it.

``make ui`` runs ``dagster dev``: a webserver, the daemons (sensors, backfills,
the run queue) and a code server, over the instance in ``DAGSTER_HOME``.
Everything a user does in the UI is a GraphQL request to the webserver's
``/graphql``: a backfill is ``launchPartitionBackfill``, materializing one
partition is ``launchPipelineExecution``, the Terminate button is
``terminateRun``, the sensor toggle is ``startSensor``/``stopSensor``.  This
module starts such a deployment on an instance folder of its own and sends
those requests, so the benchmark and the tests measure and check the path
users take, not a shortcut beside it.

The instance's ``dagster.yaml`` is the project's own (run queue, run
launcher, run monitoring), with its storage folders made literal paths, so
this process can open the same instance the daemon writes.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout: its ``workspace.yaml`` and ``dagster.yaml`` are what ``make ui`` uses."""
STORAGE_ENV = "SF_ASSETS_DAGSTER_DIR"
DAEMONS = ("SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR")
"""The daemons this project's automation and backfills need (``dagster dev`` starts them all)."""


class DeploymentError(RuntimeError):
    """The deployment did not start, or refused a request (the message has its log or answer)."""


def write_instance_yaml(home: Path, template: Path = PROJECT_ROOT / "dagster.yaml") -> Path:
    """Write ``home/dagster.yaml``: ``template`` with every ``{env: SF_ASSETS_DAGSTER_DIR}`` made ``home/storage``.

    Returns
    -------
    The written file.  Any other setting (run coordinator, run launcher, run
    monitoring) is the template's, unchanged.
    """
    storage = str((home / "storage").resolve())

    def literal(node):
        if node == {"env": STORAGE_ENV}:
            return storage
        if isinstance(node, dict):
            return {k: literal(v) for k, v in node.items()}
        return node

    config = literal(yaml.safe_load(template.read_text()))
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DagsterDev:
    """A started ``dagster dev``; ``url`` has no trailing slash."""

    url: str
    process: subprocess.Popen
    log_path: Path
    location_name: str = ""
    repository_name: str = ""

    def log_tail(self, num_chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-num_chars:]

    def wait_for(self, probe, timeout_s: float, what: str, poll_s: float = 0.5):
        """``probe()``'s first truthy answer, polled every ``poll_s``.

        Raises
        ------
        DeploymentError
            None came within ``timeout_s`` (naming ``what``, with the deployment's log).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            answer = probe()
            if answer:
                return answer
            if time.monotonic() > deadline:
                raise DeploymentError(f"{what}: not within {timeout_s:.0f} s; dagster dev's log ends:\n{self.log_tail()}")
            time.sleep(poll_s)

    def graphql(self, query: str, variables: Mapping | None = None, timeout_s: float = 60.0) -> dict:
        """POST one GraphQL request to ``/graphql``; its ``data``.

        Raises
        ------
        DeploymentError
            The server answered with GraphQL errors.
        """
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise DeploymentError(f"{self.url}/graphql: {answer['errors']}")
        return answer["data"]

    def wait_until_ready(self, timeout_s: float = 180.0) -> float:
        """Wait until the code location is loaded and the daemons report healthy; returns the seconds waited."""
        started = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise DeploymentError(
                    f"dagster dev exited with status {self.process.returncode}; its log {self.log_path} ends:\n"
                    f"{self.log_tail()}"
                )
            try:
                last = self._readiness()
                if last == "ready":
                    return time.monotonic() - started
            except (urllib.error.URLError, OSError, DeploymentError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise DeploymentError(
            f"dagster dev at {self.url} was not ready within {timeout_s:.0f} s ({last}); its log ends:\n{self.log_tail()}"
        )

    def _readiness(self) -> str:
        data = self.graphql(
            """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
                   locationOrLoadError { __typename ... on RepositoryLocation { repositories { name } }
                                         ... on PythonError { message } } } } }
                 instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }""",
            timeout_s=10,
        )
        entries = data["workspaceOrError"].get("locationEntries") or []
        if not entries or entries[0]["loadStatus"] != "LOADED":
            return "the code location is loading"
        location = entries[0]["locationOrLoadError"]
        if location["__typename"] != "RepositoryLocation":
            raise DeploymentError(f"the code location failed to load: {location.get('message')}")
        self.location_name, self.repository_name = entries[0]["name"], location["repositories"][0]["name"]
        healthy = {d["daemonType"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"] if d["healthy"]}
        missing = [d for d in DAEMONS if d not in healthy]
        return f"daemons not healthy yet: {missing}" if missing else "ready"

    # --- what the UI sends ---

    def launch_partition_backfill(
        self, partitions_by_asset: Mapping[str, list[str] | None], title: str = "", run_config: Mapping | None = None
    ) -> str:
        """Backfill ``{asset name: partition keys}`` (None: an unpartitioned asset); the backfill id.

        This is the UI's "Launch backfill" over several assets whose partitions
        differ (recordings, and sorter x recording pairs): one request, one
        backfill, parents materialized before children by the backfill daemon.
        ``run_config`` (the request's ``runConfigData``) is given to every run
        of the backfill.
        """
        selectors = []
        for asset, keys in partitions_by_asset.items():
            selector: dict = {"assetKey": {"path": [asset]}}
            if keys is not None:
                selector["partitions"] = {"ranges": [{"start": k, "end": k} for k in keys]}
            selectors.append(selector)
        data = self.graphql(
            """mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
                 launchPartitionBackfill(backfillParams: $backfillParams) {
                   __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }""",
            {
                "backfillParams": {
                    "partitionsByAssets": selectors,
                    "title": title or None,
                    **({"runConfigData": dict(run_config)} if run_config else {}),
                }
            },
        )["launchPartitionBackfill"]
        if data["__typename"] != "LaunchBackfillSuccess":
            raise DeploymentError(f"launchPartitionBackfill refused: {data}")
        return data["backfillId"]

    def launch_partition_run(self, assets: list[str], partition_key: str) -> str:
        """Materialize one partition of ``assets`` (the UI's Materialize with one partition chosen); the run id."""
        params = {
            "mode": "default",
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition_key}]},
            "selector": {
                "repositoryLocationName": self.location_name,
                "repositoryName": self.repository_name,
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": [a]} for a in assets],
            },
        }
        data = self.graphql(
            """mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
                 launchPipelineExecution(executionParams: $executionParams) {
                   __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
                   ... on RunConfigValidationInvalid { errors { message } } } }""",
            {"executionParams": params},
        )["launchPipelineExecution"]
        if data["__typename"] != "LaunchRunSuccess":
            raise DeploymentError(f"launchPipelineExecution refused: {data}")
        return data["run"]["runId"]

    def terminate_run(self, run_id: str) -> None:
        """What the run page's Terminate button sends."""
        data = self.graphql(
            """mutation Terminate($runId: String!, $terminatePolicy: TerminateRunPolicy) {
                 terminateRun(runId: $runId, terminatePolicy: $terminatePolicy) {
                   __typename ... on Error { message } } }""",
            {"runId": run_id, "terminatePolicy": "SAFE_TERMINATE"},
        )["terminateRun"]
        if data["__typename"] != "TerminateRunSuccess":
            raise DeploymentError(f"terminateRun {run_id} refused: {data}")

    def sensor_ticks(self, sensor_name: str, limit: int = 100) -> list[dict]:
        """The sensor's latest ticks, newest first: ``timestamp`` (epoch s), ``status``, ``runIds``, ``skipReason``."""
        data = self.graphql(
            """query Ticks($sensorSelector: SensorSelector!, $limit: Int) {
                 sensorOrError(sensorSelector: $sensorSelector) { __typename
                   ... on Sensor { sensorState { ticks(limit: $limit) { timestamp status runIds skipReason } } } } }""",
            {"sensorSelector": self._sensor_selector(sensor_name), "limit": limit},
        )["sensorOrError"]
        if data["__typename"] != "Sensor":
            raise DeploymentError(f"sensor {sensor_name}: {data}")
        return data["sensorState"]["ticks"]

    def _sensor_selector(self, sensor_name: str) -> dict:
        return {
            "repositoryLocationName": self.location_name,
            "repositoryName": self.repository_name,
            "sensorName": sensor_name,
        }

    def set_sensor_running(self, sensor_name: str, running: bool) -> None:
        """The sensor page's toggle."""
        selector = self._sensor_selector(sensor_name)
        if running:
            data = self.graphql(
                """mutation Start($sensorSelector: SensorSelector!) {
                     startSensor(sensorSelector: $sensorSelector) { __typename ... on Error { message } } }""",
                {"sensorSelector": selector},
            )["startSensor"]
            ok = data["__typename"] == "Sensor"
        else:
            sensor = self.graphql(
                """query Sensor($sensorSelector: SensorSelector!) {
                     sensorOrError(sensorSelector: $sensorSelector) { __typename ... on Sensor { id } } }""",
                {"sensorSelector": selector},
            )["sensorOrError"]
            data = self.graphql(
                """mutation Stop($id: String!) {
                     stopSensor(id: $id) { __typename ... on Error { message } } }""",
                {"id": sensor["id"]},
            )["stopSensor"]
            ok = data["__typename"] == "StopSensorMutationResult"
        if not ok:
            raise DeploymentError(f"{'startSensor' if running else 'stopSensor'} {sensor_name} refused: {data}")


@contextlib.contextmanager
def running_dagster_dev(
    dagster_home: Path,
    env: Mapping[str, str],
    log_path: Path,
    *,
    workspace: Path = PROJECT_ROOT / "workspace.yaml",
    port: int | None = None,
) -> Iterator[DagsterDev]:
    """Start ``dagster dev`` on 127.0.0.1 over ``dagster_home``; stop it, and the sort service, on exit.

    ``env`` is laid over this process's environment (the code location and
    the run launcher read their settings from it).  ``dagster dev``, its
    webserver, daemon and code server share a new process group, interrupted
    (then killed) at exit.  Runs execute inside the host's sort service
    (``SF_ASSETS_SERVICE_DIR``), which is told to exit too: a deployment
    that is gone leaves nothing running.  Call :meth:`DagsterDev.wait_until_ready`
    before sending requests.
    """
    port = port or free_loopback_port()
    command = [console_script("dagster"), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    process = start_dagster_process(command, dagster_home, env, log_path, cwd=workspace.parent)
    try:
        yield DagsterDev(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    finally:
        # SIGINT: dagster dev shuts its webserver, daemon and code server down in order.
        stop_process_group(process, signal.SIGINT, grace_s=20.0)
        service_dir = env.get("SF_ASSETS_SERVICE_DIR") or os.environ.get("SF_ASSETS_SERVICE_DIR")
        if service_dir:
            stop_sort_services(Path(service_dir))


def stop_sort_services(base_dir: Path) -> list[int]:
    """Ask every sort service under ``base_dir`` to exit (SIGTERM: it closes its workers); their pids."""
    from sf_assets.engines.service_address import INFO_NAME

    stopped = []
    for info in base_dir.glob(f"*/{INFO_NAME}"):
        try:
            pid = json.loads(info.read_text())["pid"]
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except (OSError, ValueError, KeyError):
            pass
    return stopped


def start_dagster_process(
    command: list[str], dagster_home: Path, env: Mapping[str, str], log_path: Path, *, cwd: Path
) -> subprocess.Popen:
    """Start a Dagster service (``dagster dev``, ``dagster-webserver``) for ``dagster_home`` in a new process group.

    ``env`` is laid over this process's environment; its output goes to ``log_path``.
    Stop it with :func:`stop_process_group`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command,
            cwd=str(cwd),
            env={**os.environ, **env, "DAGSTER_HOME": str(dagster_home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def console_script(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (else from the PATH)."""
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else name


def stop_process_group(process: subprocess.Popen, first_signal: int = signal.SIGTERM, grace_s: float = 15.0) -> None:
    """Stop the process group that ``process`` leads: ``first_signal``, then SIGKILL after ``grace_s``."""
    for sig in (first_signal, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Children (a code server) may outlive the leader by a moment: make sure the group is gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# --- a deployment of a campaign, and what it materialized ---


def deployment_environment(root: Path, kachery_dir: Path, spec: Path, manifest: Path, service_dir: Path) -> dict[str, str]:
    """The ``SF_ASSETS_*`` variables of a deployment whose data all live under ``root``.

    The code location reads them when it loads (:func:`sf_assets.core.settings.load_settings`);
    ``service_dir`` keeps its sort service (and so its warm workers) its own.
    """
    return {
        "SF_ASSETS_HOME": str(root),
        "SF_ASSETS_KACHERY_DIR": str(kachery_dir),
        "SF_ASSETS_SPEC": str(spec),
        "SF_ASSETS_STUDYSETS": str(manifest),
        "SF_ASSETS_WORKSPACE_DB": f"sqlite:///{root / 'workspace.db'}",
        "SF_ASSETS_WORK_DIR": str(root / "sorts"),
        "SF_ASSETS_OUTPUTS": str(root / "outputs"),
        "SF_ASSETS_SERVICE_DIR": str(service_dir),
    }


def campaign_backfill(campaign, sorter_names: set[str] | None = None) -> dict[str, list[str]]:
    """``launch_partition_backfill``'s request for a campaign's pairs (those of ``sorter_names``, or all).

    Their recordings and ground truths, sortings and comparisons: what a user
    selects in the UI to sort a campaign from scratch.
    """
    from sf_assets.orchestration.partitions import pair_key, recording_key

    jobs = [(s, r) for s, r in campaign.jobs if sorter_names is None or s.name in sorter_names]
    recordings = list(dict.fromkeys(recording_key(r) for _, r in jobs))
    pairs = [str(pair_key(s.name, r)) for s, r in jobs]
    return {"recording": recordings, "ground_truth": recordings, "sorting": pairs, "sorting_comparison": pairs}


def summary_covering(instance, num_comparisons: int, *, after: float = 0.0):
    """The first ``sorter_summary`` materialization after ``after`` (epoch s) that read ``num_comparisons`` comparisons.

    Returns
    -------
    Its event log entry, or None when there is none yet.
    """
    import dagster as dg

    from sf_assets.orchestration.assets.history import plain_metadata

    records = instance.fetch_materializations(dg.AssetKey("sorter_summary"), limit=1000, ascending=True).records
    for record in records:
        if record.timestamp > after and plain_metadata(record.event_log_entry).get("num_comparisons", 0) >= num_comparisons:
            return record.event_log_entry
    return None
