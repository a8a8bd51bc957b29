"""The report's HTML pieces: tables of a run's rows, numbers as the report prints them, inlined PNGs.

Nothing here reads a run; ``report.py`` composes the page from these.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Iterable

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        _plt().close(fig)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(df: pd.DataFrame, columns: Iterable[str], status: bool = False) -> str:
    columns = list(columns)
    text = {c for c in columns if not pd.api.types.is_numeric_dtype(df[c])
            and not df[c].astype(str).str.fullmatch(r"-?[\d.,]*%?").all()}  # shares as "94.5%" align as numbers
    whole = {c for c in columns if c not in text and _whole(df[c])}
    head = "".join(f'<th class="text">{_e(c)}</th>' if c in text else f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for _, r in df.iterrows():
        cls = f' class="{_e(str(r.get("status", "")))}"' if status else ""
        cells = "".join(f'<td class="text">{_e(_cell(r[c]))}</td>' if c in text
                        else f"<td>{_e(_cell(r[c], c in whole))}</td>" for c in columns)
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _whole(col: pd.Series) -> bool:
    """A column of counts (trial numbers, FLOPs), stored as floats when some cells are empty."""
    if pd.api.types.is_integer_dtype(col):
        return True
    values = pd.to_numeric(col, errors="coerce").dropna()
    return bool(len(values)) and bool((values == values.round()).all()) and bool((values.abs() >= 1).any())


def _cell(x: Any, whole: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (bool, str)):
        return str(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(f):
        return str(f)
    if whole:
        return f"{int(f):,}" if abs(f) >= 10000 else str(int(f))
    return f"{f:.4f}" if abs(f) < 1000 else f"{f:,.0f}"


def _num(x: Any) -> str:
    return _cell(x, whole=float(x).is_integer() and abs(float(x)) >= 1) if _finite(x) else "?"


def _share(x: float) -> str:
    return f"{100 * x:.1f}%"


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _anchor(name: str) -> str:
    return name.lower().replace(" ", "-")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
