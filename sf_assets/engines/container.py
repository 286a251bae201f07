"""Containerized sorters: spikeinterface runs them in docker or singularity.

spikeinterface's ``run_sorter(docker_image=...)`` / ``singularity_image=...``
does the container work; sf-assets only picks the image from the sorter
catalog and refuses early, with a message naming what is missing, when no
container runtime can be reached (rather than letting a sort fail deep
inside spikeinterface minutes later).
"""
from __future__ import annotations

import shutil
import subprocess

from sf_assets.core.errors import EnvironmentSortFailure

CONTAINER_ENGINES = ("docker", "singularity")


def require_container_runtime(engine: str) -> None:
    """Raise EnvironmentSortFailure unless ``engine`` can run containers here."""
    if engine not in CONTAINER_ENGINES:
        raise EnvironmentSortFailure(f"container engine {engine!r} is not one of {list(CONTAINER_ENGINES)}")
    if engine == "singularity":
        if shutil.which("singularity") is None and shutil.which("apptainer") is None:
            raise EnvironmentSortFailure(
                "containerized sorting with singularity needs the `singularity` (or `apptainer`) command on PATH; "
                "none was found"
            )
        return
    try:
        import docker  # the Python client spikeinterface drives
    except ImportError as exc:
        raise EnvironmentSortFailure("containerized sorting with docker needs the `docker` Python package") from exc
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # the client raises several types for "no daemon"
        hint = "" if shutil.which("docker") else " (no `docker` command on PATH either)"
        raise EnvironmentSortFailure(
            f"containerized sorting needs a running Docker daemon, and none answered at DOCKER_HOST or "
            f"/var/run/docker.sock{hint}: {type(exc).__name__}: {exc}"
        ) from exc


def docker_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
