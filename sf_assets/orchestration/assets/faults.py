"""Storage faults inside a run: one line in the step's failure, not a traceback storm.

:func:`fails_clearly_on_storage_faults` wraps an asset's function: a full
disk, a read-only folder or a database I/O error raised anywhere inside it
(see :mod:`sf_assets.core.storage_faults`) fails the step with a
``dg.Failure`` whose description is that one line, naming the path and the
cause, and is not retried.  Anything else propagates unchanged: a bug keeps
its traceback.  An asset that must leave a trace of the failed attempt (the
sorting's errored record) passes ``on_fault``.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from sf_assets.core.errors import StorageFault
from sf_assets.core.storage_faults import storage_fault

_SQLITE_URL = "sqlite:///"


def resource_locations(resources: dict[str, Any]) -> list[Path]:
    """The folders and database files the step's resources write to (named when a driver names none)."""
    paths = []
    for resource in resources.values():
        for attribute in ("db_url", "folder", "root_dir", "work_root"):
            value = getattr(resource, attribute, None)
            if not isinstance(value, str) or not value:
                continue
            if attribute == "db_url":
                if value.startswith(_SQLITE_URL):
                    paths.append(Path(value[len(_SQLITE_URL) :]))
            else:
                paths.append(Path(value))
    return paths


def _failure(fault: StorageFault) -> dg.Failure:
    return dg.Failure(description=f"storage fault: {fault}", allow_retries=False)


def fails_clearly_on_storage_faults(
    fn: Callable | None = None, *, on_fault: Callable[..., None] | None = None
) -> Callable:
    """Decorate an asset function (plain or generator) so a storage fault fails it in one line.

    Parameters
    ----------
    fn : callable
        The asset's function, below ``@dg.asset``.
    on_fault : callable, optional
        Called as ``on_fault(fault, *args, **kwargs)`` with the asset's own
        arguments before the step fails, e.g. to log an errored record; if it
        fails too, the step still fails with the original one line.
    """
    if fn is None:
        return functools.partial(fails_clearly_on_storage_faults, on_fault=on_fault)

    def handle(exc: Exception, args: tuple, kwargs: dict) -> None:
        fault = storage_fault(exc, resource_locations(kwargs))
        if fault is None:
            return
        if on_fault is not None:
            try:
                on_fault(fault, *args, **kwargs)
            except Exception:  # the fault may block that too; the step's one line still says why
                pass
        raise _failure(fault) from None

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except dg.Failure:
                raise
            except Exception as exc:
                handle(exc, args, kwargs)
                raise

        return generator

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except dg.Failure:
            raise
        except Exception as exc:
            handle(exc, args, kwargs)
            raise

    return plain
