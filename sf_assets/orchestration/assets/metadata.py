"""Metadata for people: one way to turn rows into a table the UI shows."""
from typing import Any

import dagster as dg


def json_safe(value: Any) -> Any:
    """A scalar JSON can hold: numpy scalars unwrapped, NaN as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _cell(value: Any) -> Any:
    value = json_safe(value)
    return round(value, 3) if isinstance(value, float) else value


def table(rows: list[dict[str, Any]], column_types: dict[str, str]) -> dg.MetadataValue:
    """A table of ``rows`` with the columns (name -> Dagster column type) in order."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in column_types.items()])
    records = [dg.TableRecord({name: _cell(row.get(name)) for name in column_types}) for row in rows]
    return dg.MetadataValue.table(records, schema=schema)
