"""The ``-o`` records file of ``run-sortings`` and ``sort-sf-recordings``: never overwritten, always complete."""
from __future__ import annotations

import os
from pathlib import Path

from sf_assets.core.errors import RecordError
from sf_assets.core.labels import sorting_label
from sf_assets.core.records import SortingRecord, write_records


def check_outfile(path: str) -> Path:
    """``path`` as a records file to create: refused if it exists (``/dev/null`` excepted) or has no folder."""
    outfile = Path(path)
    if outfile == Path(os.devnull):
        return outfile
    if outfile.exists() or outfile.is_symlink():
        raise RecordError(f"{path}: already exists; expected a new file name (records are never overwritten)")
    if not outfile.parent.is_dir():
        raise RecordError(f"{path}: the folder {outfile.parent} does not exist")
    return outfile


class RecordsFile:
    """The ``-o`` file, kept up to date while sortings land.

    Each write replaces the whole file atomically (write a temporary file,
    then rename), so a reader always sees a complete JSON list.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, SortingRecord] = {}

    def add(self, records: list[SortingRecord]) -> None:
        """Keep ``records`` (by sorting label) and rewrite the file now: a launch killed after
        a sort landed still leaves that sort's record (a kill -9 skips every later flush)."""
        for record in records:
            self.records[sorting_label(record.sorter_name, record.study_name, record.recording_name)] = record
        self.flush()

    def flush(self, order: list[str] | None = None) -> None:
        """Write the records now (in ``order`` of labels when given)."""
        labels = order if order is not None else list(self.records)
        records = [self.records[label] for label in labels if label in self.records]
        if self.path == Path(os.devnull):
            write_records(self.path, records)
        else:
            partial = self.path.with_name(f".{self.path.name}.partial")
            partial.unlink(missing_ok=True)
            write_records(partial, records)
            os.replace(partial, self.path)
