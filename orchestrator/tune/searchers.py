"""The checks of a model-based searcher's flags (`--search optuna / hyperopt / bohb`), made
before Ray starts and resolved into `orchestrator.tune.search.Search`: its seeds (`--seeds
K`: each draw runs once per seed, through `orchestrator.tune.repeater.SeedRepeater`), its
random first draws (`--startup-draws`) and its first points (`--start-at`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.errors import UsageError
from search_spaces import Distribution, Profile

MODEL_BASED = ("optuna", "hyperopt", "bohb")  # draw from the results so far
STARTUP_DRAWS = {"optuna": 10, "hyperopt": 20}  # Ray's defaults (bohb: searched keys + 1)


def searcher_settings(profile: Profile, algorithm: str, startup_draws: int | None,
                      start_at: Sequence[str]) -> dict[str, Any]:
    """A model-based searcher's `Search` fields, checked: its seeds (the profile's seed
    grid: each draw runs once per seed), random first draws and first points."""
    if algorithm not in MODEL_BASED:
        for flag, given in (("--startup-draws", startup_draws is not None),
                            ("--start-at", bool(start_at))):
            if given:
                raise UsageError(f"{flag}: only --search {', '.join(MODEL_BASED)} draw from "
                                 f"a model; --search {algorithm} draws every value at random")
        return {}
    least = len(profile.search) + 1  # BOHB's model: a result per searched key, and one
    if startup_draws is not None and startup_draws < (least if algorithm == "bohb" else 1):
        raise UsageError(f"--startup-draws {startup_draws}: " + (
            f"BOHB's model needs at least the searched keys + 1 = {least}"
            if algorithm == "bohb" else "must be >= 1"))
    seeds = tuple(profile.grid.get("seed", ()))
    seeds = seeds if len(seeds) > 1 else ()
    startup = startup_draws or STARTUP_DRAWS.get(algorithm, least)
    return {"seeds": seeds, "startup_draws": startup,
            "start_at": _start_points(start_at, profile)}


def _start_points(texts: Sequence[str], profile: Profile) -> tuple[dict[str, Any], ...]:
    """`--start-at KEY=VALUE[,KEY=VALUE...]`: a first draw each, every searched key at a
    value of its distribution."""
    points = []
    for text in texts:
        point = {}
        for item in text.split(","):
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not key or not value:
                raise UsageError(f"--start-at expects KEY=VALUE[,KEY=VALUE...], got '{text}'")
            if key not in profile.search:
                raise UsageError(f"--start-at {key}: not a searched key; searched: "
                                 f"{', '.join(profile.search)}")
            point[key] = _value_in(key, value, profile.search[key])
        missing = [k for k in profile.search if k not in point]
        if missing:
            raise UsageError(f"--start-at {text}: give every searched key (missing "
                             f"{', '.join(missing)})")
        points.append(point)
    if len(points) > profile.num_samples:
        raise UsageError(f"--start-at: {len(points)} points, more than the "
                         f"{profile.num_samples} draws of --num-samples")
    return tuple(points)


def _value_in(key: str, text: str, distribution: Distribution) -> Any:
    """`text` as a value of `key`'s type, within its `distribution`."""
    kind = type(distribution.args[0])
    try:
        if kind is bool and text.lower() not in ("true", "false"):
            raise ValueError
        value = text.lower() == "true" if kind is bool else kind(text)
    except ValueError:
        raise UsageError(f"--start-at {key}={text}: expected {kind.__name__}") from None
    if not distribution.contains(value):
        raise UsageError(f"--start-at {key}={text}: outside {key} ~ {distribution}")
    return value


def trials_at_once(search: Any, fit: int | None, requested: int | None) -> int | None:
    """Tune's max_concurrent_trials for `search` (a `Search`): `requested`
    (--max-concurrent-trials) if given, else `fit` (as many as fit on a local Ray; None on
    a cluster: no cap), but for a model-based searcher at most max(1, num_samples // 4)
    draws, each with its seeds, so that later draws follow the results of earlier ones (on
    a cluster too, where Tune would otherwise start every draw at once: a
    `ConcurrencyLimiter`)."""
    if requested is not None or search.algorithm not in MODEL_BASED:
        return requested if requested is not None else fit
    limit = max(1, search.num_samples // 4) * max(1, len(search.seeds))
    return min(fit or limit, limit)


def startup_note(search: Any) -> str | None:
    """The console's note when a model-based search (a `Search`) draws every value at
    random."""
    if search.startup_draws and search.num_samples <= search.startup_draws:
        return (f"[sweep] note: {search.algorithm} draws its first {search.startup_draws} "
                f"values at random; with --num-samples {search.num_samples} this is a "
                f"random search (--startup-draws N)")
    return None
