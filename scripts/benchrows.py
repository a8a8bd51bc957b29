"""What every benchmark script shares: the commit a row ran from, and rows appended to a CSV as they finish.

    import benchrows   # scripts/ is on sys.path when a script runs; benchrows.commit(), benchrows.append_rows(...)
"""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The short hash of the checkout the benchmark runs from ("unknown" outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # a copy outside git still benchmarks
        return "unknown"


def append_rows(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping]) -> None:
    """Append ``rows`` to the CSV at ``path`` (its header first when the file is new), so that a
    benchmark stopped part-way keeps what it finished."""
    path = Path(path)
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            w.writeheader()
        w.writerows(rows)


def write_table(path: str | Path, rows: Sequence[Mapping], float_digits: int | None = None) -> None:
    """Write ``rows`` as the whole CSV at ``path`` (a summary rebuilt from the appended rows), its columns
    those of the first row; floats with ``float_digits`` decimals when given."""
    def cell(v):
        return f"{v:.{float_digits}f}" if float_digits is not None and isinstance(v, float) else v

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: cell(v) for k, v in r.items()} for r in rows)
