"""User-facing errors. Every one of them ends the CLI with exit code 2 and one line."""

from __future__ import annotations


class TrusteditError(Exception):
    """A problem with the user's input (usage, path, data, architecture). Exit code 2."""

    exit_code = 2


class UsageError(TrusteditError):
    pass


class DataError(TrusteditError):
    """A malformed data file. The message names the file, the record and the field."""

    def __init__(self, path, record=None, field=None, problem="malformed"):
        self.path, self.record, self.field, self.problem = str(path), record, field, problem
        where = str(path)
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


class ArchitectureError(TrusteditError):
    pass


class NumericalError(TrusteditError):
    """NaN or Inf appeared where a finite number is required."""
