"""Slurm for the runs the Dagster daemon launches, from one environment variable.

A run the daemon starts (a backfill from the UI, the sensor's backfills, the
schedule's re-runs) has no command line: its ``sorting_engine`` resource is
built by :func:`sf_assets.orchestration.resources.default_resources` when the code location
loads.  ``SF_ASSETS_SLURM`` turns Slurm on for those runs, with the settings of
the command line's ``--slurm-*`` flags::

    SF_ASSETS_SLURM="partition=gpu,jobs_per_allocation=6,max_simultaneous_allocations=5,gpus_per_node=1"

``on`` alone takes every default.  The runs then share the campaign's
allocations (:mod:`sf_assets.engines.slurm_pool`) with any command-line launch
of the same settings and work root; nobody names allocation ids.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sf_assets.core.errors import SfAssetsError
from sf_assets.core.settings import EXPECTED_BOOL_WORDS, bool_word

SLURM_ENV = "SF_ASSETS_SLURM"
# key in the variable -> (the sorting_engine resource's field, its type, the least number it takes)
KEYS: dict[str, tuple[str, type, float]] = {
    "partition": ("slurm_partition", str, 0),
    "accept_shared_nodes": ("slurm_accept_shared_nodes", bool, 0),
    "jobs_per_allocation": ("slurm_jobs_per_allocation", int, 1),
    "max_simultaneous_allocations": ("slurm_max_simultaneous_allocations", int, 1),
    "gpus_per_node": ("slurm_gpus_per_node", int, 0),
    "idle_release_s": ("slurm_idle_release_s", float, 0.1),
    "allocation_time_min": ("slurm_allocation_time_min", float, 0),
}


def slurm_resource_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``sorting_engine`` resource fields ``SF_ASSETS_SLURM`` asks for; {} when it is unset or off.

    Parameters
    ----------
    env : Mapping[str, str]
        The environment the code location loads in (``SF_ASSETS_SLURM``).

    Returns
    -------
    dict[str, Any]
        ``use_slurm`` and the ``slurm_*`` fields given, typed; {} for an unset, empty or false variable.

    Raises
    ------
    SfAssetsError
        Naming the variable, the key and what was expected, for an unknown
        key or a value of the wrong type.
    """
    text = (env.get(SLURM_ENV) or "").strip()
    switch = bool_word(text)
    if not text or switch is False:
        return {}
    config: dict[str, Any] = {"use_slurm": True}
    if switch:
        return config
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = (piece.strip() for piece in item.partition("="))
        if not sep or key not in KEYS:
            raise SfAssetsError(
                f"environment variable {SLURM_ENV}={text!r}: {item!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(KEYS)}"
            )
        field, kind, least = KEYS[key]
        config[field] = _parsed(key, value, kind, least, text)
    return config


def _parsed(key: str, value: str, kind: type, least: float, text: str) -> Any:
    if kind is str:
        return value
    if kind is bool and bool_word(value) is not None:
        return bool_word(value)
    try:
        number = kind(value)
    except ValueError:
        number = None
    if kind is not bool and number is not None and number >= least:
        return number
    expected = EXPECTED_BOOL_WORDS if kind is bool else f"{kind.__name__} >= {least:g}"
    raise SfAssetsError(f"environment variable {SLURM_ENV}={text!r}: {key}={value!r}, expected {expected}")
