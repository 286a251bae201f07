"""The job cache: a pair is not sorted again only when what the cache vouches for is really there.

A sorting's metadata keeps the cache key of its inputs (see
:func:`~sf_assets.engines.engine.cache_key`) and the URI of its sorting
object in kachery.  An unchanged key is not enough: the stored object or its
firings may have been deleted or altered since (a cleaned-up store, a bad
disk), and a hit would then vouch for a sorting that no longer exists.  So a
hit also needs the pair's latest attempt to have succeeded, and the sorting
object and its firings file to be in the store with the sha1s their URIs
name.  Every path that decides whether to sort (the sorting asset, the
command line's planner) asks :func:`job_cache_verdict`, and says the reason
when it is a miss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sf_assets.core.errors import UriError
from sf_assets.core.uris import is_kachery_uri
from sf_assets.stores.kachery import KacheryStore


@dataclass(frozen=True)
class CacheVerdict:
    """Whether a pair's cached sorting may stand in for a new sort, and why (not).

    Attributes
    ----------
    hit : bool
        True: do not sort again.
    reason : str
        One phrase for the log and the sorting's metadata, e.g.
        ``"the sorting object sha1://... is not in the store"``.
    """

    hit: bool
    reason: str


def job_cache_verdict(latest: dict[str, Any] | None, expected_key: str, store: KacheryStore) -> CacheVerdict:
    """Decide whether the pair's latest sorting is a job-cache hit.

    Parameters
    ----------
    latest : dict | None
        Metadata of the pair's latest ``sorting`` event, materialization or
        errored observation (None: never sorted).
    expected_key : str
        The cache key of the sort that would run now.
    store : KacheryStore
        Where the sorting object must be.

    Returns
    -------
    CacheVerdict
        A hit only if the latest attempt succeeded with ``expected_key`` and
        its sorting object and firings load from ``store`` with verified sha1s.
    """
    if not latest:
        return CacheVerdict(False, "never sorted")
    if latest.get("errored"):
        return CacheVerdict(False, f"the latest attempt errored ({latest.get('failure_class', 'unclassified')})")
    if latest.get("cache_key") != expected_key:
        return CacheVerdict(False, "the inputs changed (sorter, params, recording, image, library or engine version)")
    uri = latest.get("sorting_object_uri")
    if not uri:
        return CacheVerdict(False, "no sorting object was stored")
    try:
        obj = store.load_json(uri)
        firings = obj.get("firings") if isinstance(obj, dict) else None
        if not isinstance(firings, str) or not is_kachery_uri(firings):
            return CacheVerdict(False, f"the sorting object {uri} names no firings file")
        store.load_file(firings)
    except UriError as exc:
        return CacheVerdict(False, f"the stored sorting does not verify: {exc}")
    return CacheVerdict(True, f"inputs unchanged and {uri} verified")
