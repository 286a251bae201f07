"""What the studyset sensor has seen and requested, kept in its cursor.

The sensor must request each (sorter, recording) pair once: a tick that finds
the same manifest and spec requests nothing, and a changed spec requests only
the pairs it adds, or those of a sorter whose params it changed.  The cursor
therefore holds a digest of the sources' bytes (so an unchanged tick is
answered without parsing anything), the pairs requested so far, with those
still *waiting* for their recording's run before their sort is requested and
those *held* by another run when the sensor took them on, a digest of each
sorter's params and one of each recording's URIs (recording and ground truth)
as the pairs were planned under.  A full SpikeForest campaign
is about 900 recordings x 10 sorters; the pairs are stored as one list of recording keys plus, per sorter,
indexes into it, compressed, so the cursor stays a few kilobytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping
import dataclasses
from dataclasses import dataclass, field
from typing import Any

CURSOR_FORMAT = "sf1"
"""Prefix of an encoded cursor; a cursor with another prefix is refused."""

Pair = tuple[str, str]
"""(sorter partition key, recording partition key)."""


def sources_digest(sources: Iterable[tuple[str, bytes]]) -> str:
    """A sha1 over (name, content) pairs, each part length-prefixed.

    Parameters
    ----------
    sources : iterable of (str, bytes)
        Each source's display name (path or URI) and its bytes, in a fixed order.

    Returns
    -------
    str
        40 hex digits; changes when any name or any byte changes.
    """
    digest = hashlib.sha1()
    for name, content in sources:
        for part in (name.encode("utf-8"), content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def uris_digest(*uris: str) -> str:
    """A short digest of a recording's URIs (its recording and its ground truth), in order.

    Parameters
    ----------
    *uris : str
        The URIs.

    Returns
    -------
    str
        8 hex digits: a manifest that corrects either URI changes it.
    """
    return hashlib.sha1("\n".join(uris).encode("utf-8")).hexdigest()[:8]


def params_digest(params: Mapping[str, Any]) -> str:
    """A short digest of a sorter's params as the spec gives them (seeds included), whatever their key order.

    Parameters
    ----------
    params : Mapping[str, Any]
        The params (JSON values).

    Returns
    -------
    str
        12 hex digits.
    """
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class StudysetCursor:
    """The sensor's memory between ticks.

    Attributes
    ----------
    digest : str or None
        :func:`sources_digest` of the manifest and spec last acted on; None
        before the first tick.
    requested : frozenset of (str, str)
        Every (sorter key, recording key) pair taken on so far: its sort
        requested, or waiting.
    waiting : frozenset of (str, str)
        The pairs planned again at every tick until their sort is requested,
        because their recording's run was requested (or was already running).
    held : frozenset of (str, str)
        The pairs another run was sorting (or had queued) when the sensor took
        them on: that run may be sorting on params the spec has since changed,
        so they are planned again at every tick until it has ended; the job
        cache then tells whether it sorted what the spec asks now.
    params : Mapping[str, str]
        Per sorter key, :func:`params_digest` of the params its pairs were
        taken on with (empty in cursors written before it was kept).
    uris : Mapping[str, str]
        Per recording key, :func:`uris_digest` of the URIs its pairs were
        taken on with (kept for recordings with a pair taken on; empty in
        cursors written before it was kept).
    """

    digest: str | None = None
    requested: frozenset[Pair] = frozenset()
    waiting: frozenset[Pair] = frozenset()
    held: frozenset[Pair] = frozenset()
    params: Mapping[str, str] = field(default_factory=dict)
    uris: Mapping[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> frozenset[Pair]:
        """The pairs taken on whose sort is not requested yet: :attr:`waiting` and :attr:`held`."""
        return self.waiting | self.held

    def changed_sorters(self, params_now: Mapping[str, str]) -> set[str]:
        """The sorters whose params differ from those their pairs were taken on with.

        A sorter the cursor has no digest for (new, or a cursor older than the
        digests) is not among them: its pairs, if any, stay taken.

        Parameters
        ----------
        params_now : Mapping[str, str]
            Per sorter key, :func:`params_digest` of the spec's params now.

        Returns
        -------
        set[str]
            Their sorter keys.
        """
        return _changed(self.params, params_now)

    def changed_recordings(self, uris_now: Mapping[str, str]) -> set[str]:
        """The recordings whose URIs differ from those their pairs were taken on with (a corrected manifest).

        Parameters
        ----------
        uris_now : Mapping[str, str]
            Per recording key, :func:`uris_digest` of the manifest's URIs now.

        Returns
        -------
        set[str]
            Their recording keys (a recording the cursor has no digest for is not among them).
        """
        return _changed(self.uris, uris_now)

    def forget(self, sorters: Iterable[str] = (), recordings: Iterable[str] = ()) -> "StudysetCursor":
        """This cursor without the pairs of ``sorters`` and of ``recordings``: the next plan takes them on again.

        Parameters
        ----------
        sorters : Iterable[str]
            Sorter keys.
        recordings : Iterable[str]
            Recording keys.

        Returns
        -------
        StudysetCursor
            A new cursor.
        """
        gone_sorters, gone_recordings = set(sorters), set(recordings)
        keep = lambda pairs: frozenset(p for p in pairs if p[0] not in gone_sorters and p[1] not in gone_recordings)  # noqa: E731
        return dataclasses.replace(
            self, requested=keep(self.requested), waiting=keep(self.waiting), held=keep(self.held)
        )

    def after_tick(
        self,
        digest: str,
        new_pairs: Iterable[Pair],
        waiting: Iterable[Pair] = (),
        held: Iterable[Pair] = (),
        params: Mapping[str, str] | None = None,
        uris: Mapping[str, str] | None = None,
    ) -> "StudysetCursor":
        """The cursor once a tick over sources ``digest`` has taken on ``new_pairs``, leaving ``waiting`` and ``held``.

        Parameters
        ----------
        digest : str
            The sources' digest at this tick.
        new_pairs : Iterable[Pair]
            Pairs this tick requested (remembered: never requested again).
        waiting : Iterable[Pair]
            Pairs left for a later tick until their recording is current.
        held : Iterable[Pair]
            Pairs left for a later tick until the run sorting them has ended.
        params : Mapping[str, str] or None
            Per sorter key, the params digest this tick planned with, over the cursor's (a sorter the
            spec dropped keeps its digest, so adding it back with other params is a change).
        uris : Mapping[str, str] or None
            Per recording key, the URIs digest this tick planned with, over the cursor's.

        Returns
        -------
        StudysetCursor
            A new cursor.
        """
        waiting, held = frozenset(waiting), frozenset(held)
        kept_params = {**self.params, **(params or {})}
        kept_uris = {**self.uris, **(uris or {})}
        requested = self.requested | frozenset(new_pairs) | waiting | held
        return StudysetCursor(digest, requested, waiting, held, kept_params, kept_uris)

    def encode(self) -> str:
        """A compact string for Dagster to store (see :meth:`decode`).

        Returns
        -------
        str
            A format tag and compressed JSON (recordings indexed once), so that thousands of pairs fit.
        """
        recordings = sorted({recording for _, recording in self.requested})
        index = {key: i for i, key in enumerate(recordings)}

        def by_sorter(pairs: frozenset[Pair]) -> dict[str, list[int]]:
            ids: dict[str, list[int]] = {}
            for sorter, recording in pairs:
                ids.setdefault(sorter, []).append(index[recording])
            return {sorter: sorted(i) for sorter, i in sorted(ids.items())}

        document = {
            "digest": self.digest,
            "recordings": recordings,
            "requested": by_sorter(self.requested),
            "waiting": by_sorter(self.waiting),
            "held": by_sorter(self.held),
            "params": dict(sorted(self.params.items())),
            # Aligned with "recordings": only recordings with a pair taken on have pairs to forget.
            "uris": [self.uris.get(key, "") for key in recordings],
        }
        packed = zlib.compress(json.dumps(document, separators=(",", ":")).encode("utf-8"), 9)
        return f"{CURSOR_FORMAT}:{base64.urlsafe_b64encode(packed).decode('ascii')}"

    @classmethod
    def decode(cls, text: str | None) -> "StudysetCursor":
        """Read a cursor written by :meth:`encode`; None or "" is the empty cursor.

        Parameters
        ----------
        text : str or None
            The stored cursor.

        Returns
        -------
        StudysetCursor
            The cursor.

        Raises
        ------
        ValueError
            If ``text`` is not such a cursor (the message says what was found).
        """
        if not text:
            return cls()
        prefix, _, body = text.partition(":")
        if prefix != CURSOR_FORMAT:
            raise ValueError(
                f"studyset sensor cursor: expected a string starting {CURSOR_FORMAT + ':'!r}, "
                f"got {text[:40]!r}; reset the sensor's cursor to start afresh"
            )
        try:
            document = json.loads(zlib.decompress(base64.urlsafe_b64decode(body.encode("ascii"))))
            recordings = document["recordings"]

            def pairs(by_sorter: dict[str, list[int]]) -> frozenset[Pair]:
                return frozenset((sorter, recordings[i]) for sorter, ids in by_sorter.items() for i in ids)

            requested = pairs(document["requested"])
            waiting = pairs(document.get("waiting", {}))  # absent from cursors written before it existed
            held = pairs(document.get("held", {}))  # likewise
            params = dict(document.get("params", {}))  # likewise
            uris = {key: d for key, d in zip(recordings, document.get("uris", []), strict=False) if d}  # likewise
            digest = document["digest"]
        except (
            binascii.Error, zlib.error, UnicodeError, ValueError, KeyError, IndexError, TypeError, AttributeError
        ) as exc:
            raise ValueError(
                f"studyset sensor cursor: cannot read it ({type(exc).__name__}: {exc}); "
                "reset the sensor's cursor to start afresh"
            ) from None
        if digest is not None and not isinstance(digest, str):
            raise ValueError(f"studyset sensor cursor: digest must be a string or null, got {digest!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
            raise ValueError(
                f"studyset sensor cursor: params must map sorter keys to digests, got {params!r}; "
                "reset the sensor's cursor to start afresh"
            )
        return cls(digest, requested | waiting | held, waiting, held, params, uris)


def _changed(kept: Mapping[str, str], now: Mapping[str, str]) -> set[str]:
    """The keys whose digest ``now`` differs from the ``kept`` one (a key without one kept is not)."""
    return {key for key, digest in now.items() if kept.get(key, digest) != digest}
