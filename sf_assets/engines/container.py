"""Containerized sorters: spikeinterface runs them in docker or singularity.

spikeinterface's ``run_sorter(docker_image=...)`` / ``singularity_image=...``
does the container work; sf-assets only picks the image from the sorter
catalog and refuses early, with a message naming what is missing, when no
container runtime can be reached (rather than letting a sort fail deep
inside spikeinterface minutes later).
"""
from __future__ import annotations

import os
import shutil

from sf_assets.core.errors import EnvironmentSortFailure

CONTAINER_ENGINES = ("docker", "singularity")

#: Where the docker client looks when DOCKER_HOST is unset.
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

_RUN_SORTER_IMAGE_KWARG = {"docker": "docker_image", "singularity": "singularity_image"}


def _require_known_engine(engine: str) -> None:
    if engine not in CONTAINER_ENGINES:
        raise EnvironmentSortFailure(f"container engine {engine!r} is not one of {list(CONTAINER_ENGINES)}")


def container_run_sorter_kwargs(image: str | None, engine: str) -> dict[str, str]:
    """The keyword that makes spikeinterface's ``run_sorter`` sort inside ``image``.

    Parameters
    ----------
    image : str | None
        the sorter's image (from the sorter catalog); None: sort here, no container.
    engine : str
        ``"docker"`` or ``"singularity"``.

    Returns
    -------
    dict[str, str]
        ``{}`` without an image, else ``{"docker_image": image}`` or ``{"singularity_image": image}``.

    Raises
    ------
    EnvironmentSortFailure
        ``engine`` is neither docker nor singularity.
    """
    if not image:
        return {}
    _require_known_engine(engine)
    return {_RUN_SORTER_IMAGE_KWARG[engine]: image}


def docker_host() -> str:
    """The Docker daemon address the client uses, as a message should name it.

    Returns
    -------
    str
        ``$DOCKER_HOST``, else the default socket's URL.
    """
    value = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={value}" if value else f"{DEFAULT_DOCKER_HOST} (DOCKER_HOST is unset)"


def require_container_runtime(engine: str) -> None:
    """Raise EnvironmentSortFailure unless ``engine`` can run containers here.

    Parameters
    ----------
    engine : str
        ``docker`` or ``singularity``.

    Raises
    ------
    EnvironmentSortFailure
        Naming the missing daemon or program, so the pair fails at once instead of at its first sort.
    """
    _require_known_engine(engine)
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
            f"containerized sorting needs a running Docker daemon, and none answered at {docker_host()}{hint}; "
            f"start the daemon or point DOCKER_HOST at one: {type(exc).__name__}: {exc}"
        ) from exc
