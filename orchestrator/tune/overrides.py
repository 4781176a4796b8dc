"""A profile with the user's `--set key=value` applied, and the checks of what a sweep
will need, made before Ray starts (bad input exits 2 naming the key)."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.tune.storage import open_storage
from search_spaces import SETUP, Distribution, Profile, SearchSpace


def _parse_scalar(key: str, text: str, example: Any) -> Any:
    from workloads.data import SPLIT_PER_SEED

    kind = type(example)
    if key == "data_seed" and text == SPLIT_PER_SEED:  # each seed its own split
        return text
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
        else:
            return text
    except ValueError:
        raise UsageError(f"--set {key}={text}: expected {kind.__name__}") from None
    if not math.isfinite(value):  # inf passed "positive", and every trial diverged
        raise UsageError(f"--set {key}={text}: expected a finite number")
    return value


# The forms of a searched value, as `--set` takes them.
DISTRIBUTION_FORMS = {"loguniform": "loguniform(low,high)", "uniform": "uniform(low,high)",
                      "randint": "randint(low,high)", "choice": "choice(a,b,...)"}
CALL = re.compile(r"^([A-Za-z_]\w*)\((.*)\)$")  # word(...): a distribution, or a typo of one


def _unknown_distribution(key: str, text: str, word: str) -> UsageError:
    """The error of `--set key=word(...)` whose word is no distribution: the known forms,
    and the nearest name when one is close (`logunifrom` -> loguniform)."""
    near = difflib.get_close_matches(word.lower(), DISTRIBUTION_FORMS, n=1, cutoff=0.75)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return UsageError(f"--set {key}={text}: unknown distribution '{word}'{hint}; known "
                      f"forms: {', '.join(DISTRIBUTION_FORMS.values())}")


def _parse_distribution(key: str, text: str, example: Any) -> Distribution | None:
    """`loguniform(1e-4,1e-2)` and its kin as a `Distribution` (None: not one), its bounds
    checked: finite numbers, low < high, low > 0 for loguniform, integers for randint and
    numeric keys for the ranges. Any other `word(...)` is a UsageError listing the forms
    (no value of a sweep's config looks like one)."""
    match = CALL.match(text.replace(" ", ""))
    if match is None:
        return None
    kind, inner = match.groups()
    if kind not in DISTRIBUTION_FORMS:
        raise _unknown_distribution(key, text, kind)
    parts = [part for part in inner.split(",") if part]
    if kind == "choice":
        if not parts:
            raise UsageError(f"--set {key}={text}: choice needs at least one value")
        return Distribution(kind, tuple(_parse_scalar(key, p, example) for p in parts))
    numeric = type(example) in (int, float)
    if not numeric or (kind == "randint") != (type(example) is int):
        wanted = "randint or choice" if type(example) is int else (
            "uniform, loguniform or choice" if numeric else "choice")
        raise UsageError(f"--set {key}={text}: {key} is a {type(example).__name__}; use "
                         f"{wanted}")
    if len(parts) != 2:
        raise UsageError(f"--set {key}={text}: {kind} takes two numbers, low and high")
    low, high = (_parse_scalar(key, p, example) for p in parts)
    if not low < high or (kind == "loguniform" and not low > 0):
        rule = "0 < low < high" if kind == "loguniform" else "low < high"
        raise UsageError(f"--set {key}={text}: {kind} needs {rule}")
    return Distribution(kind, (low, high))


def apply_overrides(space: SearchSpace, profile: Profile, overrides: list[str]) -> Profile:
    """Profile with `--set key=value` applied. A comma-separated value becomes a grid, a
    distribution (`loguniform(1e-4,1e-2)`, `uniform`, `randint`, `choice`) a searched key
    (`Profile.search`). An override replaces the key in every linked `setup` of the grid;
    setups it makes identical (`--set dataset=celeba` over a grid of dataset setups)
    become one."""
    config, grid = dict(profile.config), {k: list(v) for k, v in profile.grid.items()}
    search = dict(profile.search)
    setups = [dict(s) for s in grid.get(SETUP, [])]
    known = sorted({*config, *grid, *search, *(k for s in setups for k in s)} - {SETUP})
    for item in overrides:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        in_setup = any(key in s for s in setups)
        if key == SETUP or (key not in config and key not in grid and key not in search
                            and not in_setup):
            raise UsageError(f"--set {key}: unknown key for sweep '{space.name}'; "
                             f"known keys: {', '.join(known)}")
        example = (config[key] if key in config else grid[key][0] if key in grid
                   else search[key].args[0] if key in search
                   else next(s[key] for s in setups if key in s))
        distribution = _parse_distribution(key, text, example)
        values = (distribution.corners() if distribution else
                  [_parse_scalar(key, part.strip(), example) for part in text.split(",")])
        allowed = space.choices.get(key)
        for value in values:
            if allowed is not None and value not in allowed:
                raise UsageError(f"--set {key}={value}: must be one of "
                                 f"{', '.join(map(str, allowed))}")
            if key in space.positive and not value > 0:
                raise UsageError(f"--set {key}={value}: must be positive")
        for values_of in (config, grid, search):
            values_of.pop(key, None)
        for setup in setups:  # an override wins over the profile's linked setups
            setup.pop(key, None)
        if distribution is not None:
            search[key] = distribution
        elif len(values) == 1:
            config[key] = values[0]
        else:
            grid[key] = values
    setups = [s for i, s in enumerate(setups) if s not in setups[:i]]
    if any(setups):
        grid[SETUP] = setups
    else:
        grid.pop(SETUP, None)
    return replace(profile, config=config, grid=grid, search=search)


def apply_best(space: SearchSpace, profile: Profile, path: Path,
               keep: tuple[str, ...] = ()) -> Profile:
    """The profile at the values a search found (`--set-from`): the carried keys of a
    sweep's results/best.json (orchestrator.reports.search), but those in `keep` (keys the
    user --set). Found per configuration of a grid (`by`), they become linked `setup`s:
    each combination of `by` in this profile's trials with its own values; a combination
    the file has no values for is a UsageError, and so is a trial whose value of a key the
    search held fixed (`fixed`: model=gffn) differs, unless the space carries values
    across that key (`carried_across`: a base learning rate found at one batch size is
    scaled to every batch size). A population's best.json (pbt, pb2) holds schedules,
    not values: refused."""
    try:
        best = json.loads(Path(path).read_text())
        if "population" in best:
            top = best["best"]
            raise UsageError(
                f"--set-from {path}: a {best['search']['scheduler']} search's result is a "
                f"schedule trained from cloned weights (best: trial {top['trial_id']}, "
                f"{top['schedule']}), not one value per key to start a grid from; set the "
                f"values with --set, or search them with --scheduler asha")
        by, entries = list(best["by"]), list(best["per_configuration"])
        carried = [k for k in entries[0]["values"] if k not in keep]
        fixed = {k: v for k, v in dict(best.get("fixed", {})).items() if k not in keep}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise UsageError(f"--set-from {path}: not a sweep's best.json "
                         f"({error.__class__.__name__}: {error})") from None
    setups = [dict(s) for s in profile.grid.get(SETUP, [])]
    known = {*profile.config, *profile.grid, *profile.search, *(k for s in setups for k in s)}
    unknown = [k for k in (*carried, *by) if k not in known]
    if unknown:
        raise UsageError(f"--set-from {path}: {', '.join(unknown)}: not a key of sweep "
                         f"'{space.name}'")
    for config in profile.trial_configs():
        other = {k: config.get(k) for k, v in fixed.items()
                 if config.get(k, v) != v and k not in space.carried_across}
        if other:
            key, value = next(iter(other.items()))
            raise UsageError(f"--set-from {path}: found with {key}={fixed[key]} held fixed; "
                             f"this sweep also runs {key}={value}: add --set {key}="
                             f"{fixed[key]}, or search {key}={value} too")
    found = {json.dumps([e["config"][k] for k in by]): e["values"] for e in entries}
    cells = list({json.dumps([c.get(k) for k in by]): {k: c.get(k) for k in by}
                  for c in profile.trial_configs()}.values())
    for cell in cells:
        if json.dumps(list(cell.values())) not in found:
            raise UsageError(f"--set-from {path}: no values of {', '.join(carried)} for "
                             f"{', '.join(f'{k}={v}' for k, v in cell.items())}")
    config = {k: v for k, v in profile.config.items() if k not in (*carried, *by)}
    grid = {k: v for k, v in profile.grid.items() if k not in (*carried, *by, SETUP)}
    search = {k: v for k, v in profile.search.items() if k not in (*carried, *by)}
    linked = []
    for setup in setups or [{}]:  # setups that fix a key of `by` keep their own cells
        for cell in cells:
            if all(setup.get(k, v) == v for k, v in cell.items()):
                values = {k: v for k, v in found[json.dumps(list(cell.values()))].items()
                          if k in carried}
                merged = {**{k: v for k, v in setup.items() if k not in carried}, **cell,
                          **values}
                if merged not in linked:
                    linked.append(merged)
    if len(linked) == 1:
        config.update(linked[0])
    else:
        grid[SETUP] = linked
    return replace(profile, config=config, grid=grid, search=search)


def profile_values(profile: Profile, key: str) -> list[Any]:
    """Every value `key` takes in the profile's trials (once each, in trial order; a
    searched key's `corners`)."""
    return list(dict.fromkeys(c.get(key) for c in profile.checked_configs()))


SCORE_KEYS = ("ood_scores", "failure_scores", "finetuned_scores")  # keys that name scores


def check_scores(space: SearchSpace, profile: Profile) -> None:
    """`ood_scores` (and `failure_scores`) is "all" or registered score names joined by "+",
    each one that the trial's model can serve (a score's `requires` within the model's
    `provides`); the space's `count_lists` hold positive integers joined by "+"."""
    from workloads.models import GENERATIVE_MODELS, model_provides
    from workloads.scores import OOD_SCORES

    for config in profile.checked_configs():
        for key in space.count_lists:
            if key in config and not all(v.strip().isdigit() and int(v) > 0
                                         for v in str(config[key]).split("+")):
                raise UsageError(f"--set {key}={config[key]}: expected positive integers "
                                 f"joined by '+', e.g. 5+50")
        if not 0 <= config.get("background_mu", 0) < 1:
            raise UsageError(f"--set background_mu={config['background_mu']}: must be in "
                             f"[0, 1) (the fraction of pixels the background model's inputs "
                             f"have perturbed)")
        for key in SCORE_KEYS:
            value = config.get(key)
            if value is None or value == "all":
                continue
            names = str(value).split("+")
            unknown = [n for n in names if n not in OOD_SCORES]
            if unknown:
                raise UsageError(f"--set {key}={value}: unknown score {', '.join(unknown)}; "
                                 f"use 'all' or names joined by '+' from: "
                                 f"{', '.join(OOD_SCORES)}")
            if "likelihood_ratio" in names and not config.get("background_mu", 0) > 0:
                raise UsageError(f"--set {key}={value}: 'likelihood_ratio' needs a background "
                                 f"model; add --set background_mu=0.2 (the fraction of "
                                 f"pixels it perturbs)")
            offered = set(model_provides(config))
            for name in names:
                missing = set(OOD_SCORES[name].requires) - offered
                if missing:
                    model = (config["model"] if config["model"] in GENERATIVE_MODELS
                             else config["arch"])
                    raise UsageError(f"--set {key}={value}: '{name}' needs "
                                     f"{', '.join(sorted(missing))}, which the {model} model "
                                     f"of this sweep does not provide")


def check_datasets(profile: Profile, data_dir: str, download: bool) -> None:
    """Fail before starting Ray when a dataset of the sweep is missing or unreadable (or
    download it), or when a trial's batch is larger than its training set (it would take
    no optimizer step)."""
    from workloads.data import (
        DIGITS,
        VAL_FRACTION,
        DatasetUnreadableError,
        absent_ood_sets,
        ensure_dataset,
        training_set_size,
        trial_data_seed,
    )

    for name in profile_values(profile, "dataset"):
        ensure_dataset(name, data_dir, download=download)
        for other, expected in absent_ood_sets(name, data_dir).items():
            print(f"[sweep] note: OOD set {other} of {name} is skipped: {expected} is not "
                  f"under {data_dir}", flush=True)
    sizes: dict[tuple, int] = {}
    configs = profile.checked_configs()
    for config in configs:
        batch_size = config.get("batch_size")
        if batch_size is None or "dataset" not in config:
            continue
        fraction = config.get("val_fraction", VAL_FRACTION)
        if not 0 < fraction < 1:
            raise UsageError(f"--set val_fraction={fraction}: must be in (0, 1) (the share "
                             f"of the training split held out for validation)")
        key = (config["dataset"], trial_data_seed({"seed": 0, **config}),
               config.get("normal_class", -1), fraction)
        if key not in sizes:
            try:
                sizes[key] = training_set_size(key[0], data_dir, seed=key[1],
                                               normal_class=key[2], val_fraction=fraction)
            except DatasetUnreadableError:
                raise
            except ValueError as error:  # scikit-learn: fewer held out than classes
                raise UsageError(f"--set val_fraction={fraction}: {key[0]}: {error}") from None
        if batch_size > sizes[key]:
            what = key[0] + (f" (normal_class {key[2]})" if key[2] >= 0 else "")
            raise UsageError(f"--set batch_size={batch_size}: larger than the {sizes[key]:,} "
                             f"training examples of {what}")
    on_digits = {c.get("val_fraction", VAL_FRACTION) for c in configs
                 if c.get("dataset") == DIGITS} - {VAL_FRACTION}
    if on_digits:
        print(f"[sweep] note: val_fraction={'/'.join(map(str, sorted(on_digits)))} applies to "
              f"the image datasets; digits keeps its 60/20/20 split", flush=True)
    check_outliers(profile, data_dir, download)


def check_outliers(profile: Profile, data_dir: str, download: bool) -> None:
    """Trials that fine-tune with outliers (`energy_epochs` > 0): the
    outlier set exists for the dataset and is on disk (or downloaded), and the energy
    margins are ordered, m_in < m_out (Liu et al. 2020)."""
    from workloads.data import IMAGE_DATASETS, ensure_dataset
    from workloads.data.outliers import resolve_outlier_set

    for config in profile.checked_configs():
        if config.get("energy_epochs", 0) < 0:
            raise UsageError(f"--set energy_epochs={config['energy_epochs']}: must be >= 0")
        if config.get("energy_epochs", 0) == 0:
            continue
        try:
            name = resolve_outlier_set(config["outlier_set"], config["dataset"])
        except ValueError as error:
            raise UsageError(f"--set outlier_set={config['outlier_set']}: {error}") from None
        if not config["energy_m_in"] < config["energy_m_out"]:
            raise UsageError(f"--set energy_m_in={config['energy_m_in']}, energy_m_out="
                             f"{config['energy_m_out']}: m_in must be below m_out (ID "
                             f"energies are pushed below m_in, outliers' above m_out)")
        if name in IMAGE_DATASETS:
            ensure_dataset(name, data_dir, download=download)


def check_storage(storage: str) -> None:
    """`--storage` must be a URI whose filesystem this process can write (a missing S3
    bucket, bad credentials or an unreachable server found here, before Ray starts), or a
    directory this process can write (created if absent)."""
    target = open_storage(storage)
    if target.is_uri:
        probe = target.path(f".write-check-{os.getpid()}")
        try:
            target.filesystem.create_dir(target.root, recursive=True)  # as Tune will
            with target.filesystem.open_output_stream(probe) as stream:
                stream.write(b"")
            target.filesystem.delete_file(probe)
        except OSError as error:
            detail = (str(error).strip().splitlines() or [""])[0]
            raise UsageError(f"--storage {target.display()}: cannot write there ({detail})") \
                from None
        return
    path = Path(storage)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--storage {storage}: a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UsageError(f"--storage {storage}: cannot write there "
                         f"({error.strerror or error})") from None
