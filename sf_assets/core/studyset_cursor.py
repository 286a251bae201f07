"""What the studyset sensor has seen and requested, kept in its cursor.

The sensor must request each (sorter, recording) pair once: a tick that finds
the same manifest and spec requests nothing, and a changed spec requests only
the pairs it adds.  The cursor therefore holds a digest of the sources' bytes
(so an unchanged tick is answered without parsing anything) and the pairs
requested so far, with those still *waiting* for their recording's run
before their sort is requested.  A full SpikeForest campaign is about 900 recordings x 10
sorters; the pairs are stored as one list of recording keys plus, per sorter,
indexes into it, compressed, so the cursor stays a few kilobytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

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
        The pairs whose recording run was requested (or was already running)
        and whose sort is requested once that recording is current.
    """

    digest: str | None = None
    requested: frozenset[Pair] = frozenset()
    waiting: frozenset[Pair] = frozenset()

    def after_tick(self, digest: str, new_pairs: Iterable[Pair], waiting: Iterable[Pair] = ()) -> "StudysetCursor":
        """The cursor once a tick over sources ``digest`` has taken on ``new_pairs``, leaving ``waiting``."""
        waiting = frozenset(waiting)
        return StudysetCursor(digest, self.requested | frozenset(new_pairs) | waiting, waiting)

    def encode(self) -> str:
        """A compact string for Dagster to store (see :meth:`decode`)."""
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
        }
        packed = zlib.compress(json.dumps(document, separators=(",", ":")).encode("utf-8"), 9)
        return f"{CURSOR_FORMAT}:{base64.urlsafe_b64encode(packed).decode('ascii')}"

    @classmethod
    def decode(cls, text: str | None) -> "StudysetCursor":
        """Read a cursor written by :meth:`encode`; None or "" is the empty cursor.

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
        return cls(digest, requested | waiting, waiting)
