"""Typed reads of parsed JSON/YAML documents, with messages a user can act on.

The manifest, the spec and the sorting records are all plain documents read
from files someone else wrote.  Each value is checked where it is read, and a
wrong one is reported as ``<file>: <path>: expected <what>, got <value>`` with
the path written the way the user would look it up
(``StudySets[2].studies[0].recordings[5].numChannels``).  Keeping these reads
in one module keeps that wording, and the rule that a boolean is never a
number, the same in every file format.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NoReturn

from sf_assets.core.errors import SfAssetsError

REQUIRED: Any = object()
"""Default marker: the key must be present."""

_DESCRIBE_MAX_CHARS = 60


def describe(value: Any) -> str:
    """A short, one-line rendering of ``value`` and its kind, for messages.

    Parameters
    ----------
    value : Any
        A value from a parsed document.

    Returns
    -------
    str
        For example ``true (a boolean)``, ``"32" (a string)`` or ``a list``.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        kind = "a string"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"{value!r} (not a finite number)"
        kind = "a number"
    else:
        return f"a {type(value).__name__}"
    text = json.dumps(value)
    if len(text) > _DESCRIBE_MAX_CHARS:
        text = text[: _DESCRIBE_MAX_CHARS - 3] + "..."
    return f"{text} ({kind})"


@dataclass(frozen=True)
class Where:
    """A position in a document: the file, the path inside it, the error to raise.

    Attributes
    ----------
    source : str
        The file or URI as the user named it.
    path : str
        The path inside the document, ``""`` for the top level.
    error : type[SfAssetsError]
        The error type for this document (``ManifestError``, ``SpecError``, ...).
    """

    source: str
    path: str
    error: type[SfAssetsError]

    def key(self, name: str) -> Where:
        """The position of member ``name`` of the object at this position.

        Parameters
        ----------
        name : str
            The member's name.

        Returns
        -------
        Where
            The member's position.
        """
        return Where(self.source, f"{self.path}.{name}" if self.path else name, self.error)

    def item(self, index: int) -> Where:
        """The position of element ``index`` of the list at this position.

        Parameters
        ----------
        index : int
            The element's index.

        Returns
        -------
        Where
            The element's position.
        """
        return Where(self.source, f"{self.path}[{index}]", self.error)

    def fail(self, problem: str) -> NoReturn:
        """Raise this document's error for a problem at this position.

        Parameters
        ----------
        problem : str
            What is wrong, in words a user can act on.

        Raises
        ------
        SfAssetsError
            The document's error type, naming the position and what was expected.
        """
        raise self.error(f"{self.source}: {self.path or 'top level'}: {problem}")

    def expected(self, what: str, value: Any) -> NoReturn:
        """Raise: the value here is not ``what``.

        Parameters
        ----------
        what : str
            What was expected there (``a string``, ``an integer >= 0``).
        value : Any
            The value found.

        Raises
        ------
        SfAssetsError
            The document's error type, naming the position and what was expected.
        """
        self.fail(f"expected {what}, got {describe(value)}")


def decode_utf8(raw: bytes | str, source: str, error: type[SfAssetsError]) -> str:
    """Text of a document; raw bytes must be UTF-8 (a leading BOM is dropped).

    Parameters
    ----------
    raw : bytes or str
        The document's content.
    source : str
        The document's name (a path or URI), for the error.
    error : type[SfAssetsError]
        The document's error type (``ManifestError``, ``SpecError`` ...).

    Returns
    -------
    str
        The text.

    Raises
    ------
    error
        Naming ``source`` and the offset of the first byte that is not UTF-8.
    """
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{source}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        ) from None


def _member(obj: dict, key: str, where: Where, expected: str, default: Any) -> tuple[Any, Where, bool]:
    """``(value, position, present)``; a missing required key fails here."""
    here = where.key(key)
    if key in obj:
        return obj[key], here, True
    if default is REQUIRED:
        here.fail(f"missing key; expected {expected}")
    return default, here, False


def as_object(value: Any, where: Where) -> dict:
    """``value`` if it is an object (a mapping with string keys).

    Parameters
    ----------
    value : Any
        The value found.
    where : Where
        The value's position in its document, for the error.

    Returns
    -------
    dict
        The object.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    if not isinstance(value, dict):
        where.expected("an object", value)
    for key in value:
        if not isinstance(key, str):
            where.fail(f"expected string keys, got key {describe(key)}")
    return value


def as_list(value: Any, where: Where) -> list:
    """``value`` if it is a list.

    Parameters
    ----------
    value : Any
        The value found.
    where : Where
        The value's position in its document, for the error.

    Returns
    -------
    list
        The list.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    if not isinstance(value, list):
        where.expected("a list", value)
    return value


def as_str(value: Any, where: Where) -> str:
    """``value`` if it is a string.

    Parameters
    ----------
    value : Any
        The value found.
    where : Where
        The value's position in its document, for the error.

    Returns
    -------
    str
        The string.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    if not isinstance(value, str):
        where.expected("a string", value)
    return value


def as_int(value: Any, where: Where, minimum: int, maximum: int) -> int:
    """``value`` if it is an integer (not a boolean) in ``[minimum, maximum]``.

    Parameters
    ----------
    value : Any
        The value found.
    where : Where
        The value's position in its document, for the error.
    minimum : int or float
        The least value accepted.
    maximum : int or float
        The greatest value accepted.

    Returns
    -------
    int
        The integer.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    expected = f"an integer from {minimum} to {maximum}"
    if isinstance(value, bool) or not isinstance(value, int):
        where.expected(expected, value)
    if not minimum <= value <= maximum:
        where.expected(expected, value)
    return value


def as_float(value: Any, where: Where, minimum: float, maximum: float, *, above_minimum: bool = False) -> float:
    """``value`` as a float if it is a finite number (not a boolean) in range.

    ``above_minimum=True`` excludes ``minimum`` itself (a rate of 0 Hz is not a rate).

    Parameters
    ----------
    value : Any
        The value found.
    where : Where
        The value's position in its document, for the error.
    minimum : int or float
        The least value accepted.
    maximum : int or float
        The greatest value accepted.
    above_minimum : bool
        Exclude ``minimum`` itself.

    Returns
    -------
    float
        The number.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    low = "above" if above_minimum else "at least"
    expected = f"a number {low} {minimum:g} and at most {maximum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        where.expected(expected, value)
    number = float(value)
    too_low = number <= minimum if above_minimum else number < minimum
    if not math.isfinite(number) or too_low or number > maximum:
        where.expected(expected, value)
    return number


def read_object(obj: dict, key: str, where: Where, default: Any = REQUIRED, *, nullable: bool = False) -> dict | None:
    """Member ``key`` of ``obj``, an object (or null when ``nullable``; ``default`` when missing).

    Parameters
    ----------
    obj : dict
        The object that holds the member.
    key : str
        The member's name.
    where : Where
        The value's position in its document, for the error.
    default : Any
        The value when the member is missing (default: it is required).
    nullable : bool
        Accept ``null`` (read as None).

    Returns
    -------
    dict or None
        The object, None for ``null``, or ``default``.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    value, here, present = _member(obj, key, where, "an object", default)
    if not present or (nullable and value is None):
        return value
    return as_object(value, here)


def read_list(obj: dict, key: str, where: Where, default: Any = REQUIRED) -> tuple[list, Where]:
    """Member ``key`` of ``obj``, a list, with its position (for its items).

    Parameters
    ----------
    obj : dict
        The object that holds the member.
    key : str
        The member's name.
    where : Where
        The value's position in its document, for the error.
    default : Any
        The value when the member is missing (default: it is required).

    Returns
    -------
    tuple[list, Where]
        The list and its position.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    value, here, present = _member(obj, key, where, "a list", default)
    return (as_list(value, here) if present else value), here


def read_str(obj: dict, key: str, where: Where, default: Any = REQUIRED, *, nullable: bool = False) -> str | None:
    """Member ``key`` of ``obj``, a string (or null when ``nullable``).

    Parameters
    ----------
    obj : dict
        The object that holds the member.
    key : str
        The member's name.
    where : Where
        The value's position in its document, for the error.
    default : Any
        The value when the member is missing (default: it is required).
    nullable : bool
        Accept ``null`` (read as None).

    Returns
    -------
    str or None
        The string, None for ``null``, or ``default``.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    value, here, present = _member(obj, key, where, "a string", default)
    if not present or (nullable and value is None):
        return value
    return as_str(value, here)


def read_int(obj: dict, key: str, where: Where, minimum: int, maximum: int, default: Any = REQUIRED) -> int:
    """Member ``key`` of ``obj``, an integer in ``[minimum, maximum]``.

    Parameters
    ----------
    obj : dict
        The object that holds the member.
    key : str
        The member's name.
    where : Where
        The value's position in its document, for the error.
    minimum : int or float
        The least value accepted.
    maximum : int or float
        The greatest value accepted.
    default : Any
        The value when the member is missing (default: it is required).

    Returns
    -------
    int
        The integer, or ``default``.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    value, here, present = _member(obj, key, where, "an integer", default)
    return as_int(value, here, minimum, maximum) if present else value


def read_float(
    obj: dict,
    key: str,
    where: Where,
    minimum: float,
    maximum: float,
    default: Any = REQUIRED,
    *,
    above_minimum: bool = False,
    nullable: bool = False,
) -> float | None:
    """Member ``key`` of ``obj``, a finite number in range (or null when ``nullable``).

    Parameters
    ----------
    obj : dict
        The object that holds the member.
    key : str
        The member's name.
    where : Where
        The value's position in its document, for the error.
    minimum : int or float
        The least value accepted.
    maximum : int or float
        The greatest value accepted.
    default : Any
        The value when the member is missing (default: it is required).
    above_minimum : bool
        Exclude ``minimum`` itself.
    nullable : bool
        Accept ``null`` (read as None).

    Returns
    -------
    float or None
        The number, None for ``null``, or ``default``.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    value, here, present = _member(obj, key, where, "a number", default)
    if not present or (nullable and value is None):
        return value
    return as_float(value, here, minimum, maximum, above_minimum=above_minimum)


def read_bool(obj: dict, key: str, where: Where, default: Any = REQUIRED) -> bool:
    """Member ``key`` of ``obj``, ``true`` or ``false`` (never 0 or 1).

    Parameters
    ----------
    obj : dict
        The object that holds the member.
    key : str
        The member's name.
    where : Where
        The value's position in its document, for the error.
    default : Any
        The value when the member is missing (default: it is required).

    Returns
    -------
    bool
        The boolean, or ``default``.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    value, here, present = _member(obj, key, where, "true or false", default)
    if present and not isinstance(value, bool):
        here.expected("true or false", value)
    return value


def check_json_compatible(value: Any, where: Where) -> None:
    """Fail unless ``value`` survives a round trip through standard JSON.

    Sorter parameters come from YAML, which also has dates, sets, binary data
    and ``.nan``; they end up in JSON records and Dagster metadata, so only
    strings, finite numbers, booleans, null, lists and string-keyed mappings
    are accepted.

    Parameters
    ----------
    value : Any
        The value found.
    where : Where
        The value's position in its document, for the error.

    Raises
    ------
    SfAssetsError
        The document's error type, naming the position and what was expected.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            where.expected("a finite number", value)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_json_compatible(item, where.item(index))
        return
    if isinstance(value, dict):
        for key, item in as_object(value, where).items():
            check_json_compatible(item, where.key(key))
        return
    where.expected("a string, number, boolean, null, list or mapping", value)
