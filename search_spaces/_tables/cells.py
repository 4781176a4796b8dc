"""Cells of the result tables, as the documents print their numbers."""

from __future__ import annotations

import pandas as pd

DIFFERENT_DATA = ("Our data is not the thesis' ({ours} here): direction and size are "
                  "comparable, values are not.")


def short(value: float) -> str:
    """.969 as the thesis prints it (1.0 for one)."""
    if value != value:
        return "–"
    text = f"{value:.3f}"
    return "1.0" if text == "1.000" else text.lstrip("0")


def mean_std(values: pd.Series, scale: float = 1.0, digits: int = 3, std: bool = True) -> str:
    """"mean ± std" over seeds as the documents report (the mean alone for one seed, or
    with `std` False)."""
    values = values.dropna().to_numpy() * scale
    if len(values) == 0:
        return "–"
    spread = f" ± {values.std(ddof=1):.{digits}f}" if std and len(values) > 1 else ""
    return f"{values.mean():.{digits}f}{spread}"


def pct(values: pd.Series, std: bool = True) -> str:
    """Mean (± std) over seeds of fractions, in % as document 003 prints them."""
    return mean_std(values, 100, 2, std)


def metric_triple(rows: pd.DataFrame) -> str:
    """AUROC/AUPR-in/TNR95 of `rows` (means over seeds) as the thesis prints them, "–"
    without rows."""
    if not len(rows):
        return "–"
    return "/".join(short(rows[m].mean()) for m in ("auroc", "aupr_in", "tnr95"))


def group_rows(frame: pd.DataFrame, by: list[str], columns: dict) -> pd.DataFrame:
    """A row per group of `frame` by `by` (the groups' values first), then a cell per
    `columns` entry (label -> cell(the group's rows))."""
    rows = []
    for values, group in frame.groupby(by, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        rows.append({**dict(zip(by, values)),
                     **{label: cell(group) for label, cell in columns.items()}})
    return pd.DataFrame(rows)
