"""Reading a user's CSV: a header of column names, then rows of numbers. Every problem is one
DataError naming the file, the row (1-based, counting the header as line 1) and the column."""

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 64 * 2**20  # far more rows than a run's context or window needs
# The largest magnitude a cell may have. The runs compute in float32 (at most 3.4e38), and forecast
# takes squares of the data's values and sums them (window norms, squared errors): the squared
# difference of two cells, summed over every cell a file can hold (at most MAX_BYTES / 2, a digit
# and a comma each), stays finite: (MAX_BYTES / 2) (2 MAX_MAGNITUDE)^2 = 1.3e38. Predict
# standardises in float64, which holds far more.
MAX_MAGNITUDE = 1e15


class DataError(ValueError):
    """A user's data file cannot be used as asked; the message says where and what to do."""


@dataclass(frozen=True)
class Table:
    """The numbers of a CSV: columns (names), rows (one list per data line, None where a cell is
    empty) and the file's line number of each row."""

    path: Path
    columns: list[str]
    rows: list[list[float | None]]
    lines: list[int]

    def where(self, index: int, column: int | None = None) -> str:
        cell = "" if column is None else f", column {self.columns[column]!r}"
        return f"{str(self.path)!r} line {self.lines[index]}{cell}"

    def require_complete(self, columns: range | list[int]) -> None:
        """Every row has a value in each of `columns`."""
        for index, row in enumerate(self.rows):
            for column in columns:
                if row[column] is None:
                    raise DataError(f"{self.where(index, column)}: missing value")


def read_table(path: str | Path, what: str) -> Table:
    """The CSV at path (`what` names its role in messages, e.g. "data file")."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{what} {str(path)!r} is a directory, not a CSV file")
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise DataError(
            f"{what} {str(path)!r} is {size / 2**20:.0f} MiB; at most {MAX_BYTES // 2**20} MiB is "
            "read: pass the rows you need"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{what} {str(path)!r} is not UTF-8 text") from None
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise DataError(f"{what} {str(path)!r} is not a readable CSV: {error}") from None
    numbered = [
        (number, cells) for number, cells in enumerate(lines, 1) if any(c.strip() for c in cells)
    ]
    if not numbered:
        raise DataError(f"{what} {str(path)!r} is empty: expected a header line and rows")
    (_, header), *body = numbered
    columns = [name.strip() for name in header]
    if any(not name for name in columns) or len(set(columns)) != len(columns):
        raise DataError(
            f"{what} {str(path)!r}: the header {header} needs distinct, non-empty names"
        )
    if not body:
        raise DataError(f"{what} {str(path)!r} has a header but no rows")
    rows = []
    for number, cells in body:
        if len(cells) != len(columns):
            raise DataError(
                f"{str(path)!r} line {number}: {len(cells)} cells, the header has {len(columns)}"
            )
        row = []
        for name, cell in zip(columns, cells, strict=True):
            row.append(_number(cell, f"{str(path)!r} line {number}, column {name!r}"))
        rows.append(row)
    return Table(path, columns, rows, [number for number, _ in body])


def _number(cell: str, where: str) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{where}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {cell!r} is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise DataError(
            f"{where}: {cell!r} is beyond {MAX_MAGNITUDE:g} in magnitude, the largest iclab reads "
            "(forecasts compute in float32): rescale the column"
        )
    return value


def require_finite_results(path: Path, what: str, values: dict) -> None:
    """A DataError, before anything is written, unless each predictor's numbers (name -> a
    number or nested lists of them) are finite: a summary never holds NaN or Infinity."""
    for name, numbers in values.items():
        if not all(math.isfinite(v) for v in _flat(numbers)):
            raise DataError(
                f"{str(path)!r}: {name}'s {what} are not finite: the values are too large or too "
                "far from the rest for the run's float32 computation (nothing was written)"
            )


def _flat(numbers) -> list[float]:
    if isinstance(numbers, list | tuple):
        return [v for item in numbers for v in _flat(item)]
    return [numbers]


def output_file(out: str | Path | None, default: str) -> Path:
    """The --out path (default: `default` in the working directory); DataError if it names no
    file ("", ".", "/", "..")."""
    path = Path(default if out is None else out)
    if path.name in ("", ".", ".."):
        raise DataError(f"--out {str(out)!r} names no file: give a file name such as {default!r}")
    return path


def refuse_existing(*paths: Path) -> None:
    """Outputs are never written over: a DataError if any of paths exists or two are one."""
    if len({path.resolve() for path in paths}) < len(paths):
        names = ", ".join(str(path) for path in paths)
        raise DataError(f"the outputs {names} would overwrite each other: give --out a .csv name")
    for path in paths:
        if path.exists():
            raise DataError(f"{str(path)!r} exists; choose another --out (nothing was written)")
