"""Lists in a trial's config: values joined by "+" ("5+50", "0.1+0.01"), as score names
are, so that a list stays one value of a grid."""

from __future__ import annotations

from typing import Any


def plus_list(text: Any, kind: type = float) -> list:
    """"0.1+0.01" -> [0.1, 0.01]; `kind` int for counts ("5+50" -> [5, 50])."""
    return [kind(v) for v in str(text).split("+") if v.strip()]
