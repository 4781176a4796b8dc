"""REPRODUCTION.md of a sweep: per claim of the documents that its search space declares,
the statement and source, our number with its 95% interval over seeds, and a verdict
(`reports.claims`); then the documents' tables beside ours that its search space declares
(`SearchSpace.beside`; the defense's Tables 4.1-4.4 from its latest run); then what
produced the numbers (`reports.provenance`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from orchestrator.reports.aggregate import SEED, config_columns
from orchestrator.reports.claims import (
    Verdict,
    evaluate_claim,
    natural_interval,
    quantity,
    verdict_markdown,
)
from orchestrator.reports.collect import SWEEP_FILE, load_results, recorded_settings
from orchestrator.reports.provenance import FILE as PROVENANCE_FILE
from orchestrator.reports.provenance import provenance_markdown
from orchestrator.reports.search import search_of, search_text
from search_spaces import SearchSpace, SweepResults, get_search_space

FILE = "REPRODUCTION.md"
DEFENSE_CONFIG = ("alpha", "dequantization", "normal_class")


def latest_defense(sweep_dir: Path) -> tuple[pd.DataFrame | None, Path | None]:
    """The latest defense run's table (defense/*/defense.csv) of a sweep, if any."""
    runs = sorted(Path(sweep_dir).glob("defense/*/defense.csv"), key=lambda p: p.parent.name)
    return (pd.read_csv(runs[-1]), runs[-1].parent) if runs else (None, None)


def evaluate_claims(space: SearchSpace, table: pd.DataFrame, ood: pd.DataFrame,
                    settings: dict, defense: pd.DataFrame | None,
                    examples: pd.DataFrame | None = None) -> list[Verdict]:
    """A verdict on every claim `space` declares, each on the results it names (a claim on
    the trials with their per-example outputs `examples`)."""
    data = {"trials": (table, config_columns(table, settings)),
            "ood": (ood, [c for c in ood.columns if c in settings or c in ("score", "ood_set")]
                    if not ood.empty else []),
            "defense": (defense, [c for c in DEFENSE_CONFIG if defense is not None
                                  and c in defense.columns])}
    verdicts = []
    for claim in space.claims:
        frame, config = data[claim.data]
        if frame is None or frame.empty:
            run = "orchestrator.defend" if claim.data == "defense" else "the sweep"
            verdicts.append(Verdict(claim, "inconclusive",
                                    detail=f"no {claim.data} results (run {run})"))
            continue
        verdicts.append(evaluate_claim(claim, frame, config,
                                       examples if claim.data == "trials" else None))
    return verdicts


def reproduction_report(space: SearchSpace, sweep_dir: Path, table: pd.DataFrame,
                        tables: dict[str, pd.DataFrame], settings: dict,
                        examples: pd.DataFrame | None = None) -> tuple[str, list[Verdict]]:
    """The markdown of REPRODUCTION.md, and the verdicts; `tables`: the sweep's long tables
    by name (`Artifacts.tables`: `ood` and the study's own); `examples`: the trials'
    per-example outputs (`Artifacts.examples`)."""
    ood = tables.get("ood", pd.DataFrame())
    defense, defense_dir = latest_defense(sweep_dir)
    search = search_of(settings)
    partial = partial_run(table)
    verdicts = [] if search or partial else evaluate_claims(space, table, ood, settings,
                                                            defense, examples)
    seeds = table[SEED].nunique() if SEED in table else 1
    dataset = str(table["dataset"].iloc[0]) if "dataset" in table and len(table) else "?"
    parts = [f"# {space.name}: the documents' claims, reproduced\n",
             f"Sweep `{Path(sweep_dir).name}`: {len(table)} trials, {seeds} seed(s) per "
             f"configuration, data `{dataset}`. A verdict is *holds* when the claim's "
             f"quantity has its 95% interval on the claim's side, *refuted* when the "
             f"interval excludes the claim, *inconclusive* otherwise (always with one "
             f"seed). The interval covers the training seeds and the test inputs: Student's "
             f"t over the seeds, with the spread of the per-seed numbers plus the variance "
             f"of their mean over 200 resamples of the test inputs (each test set drawn "
             f"once per resample and shared by every trial scored on it, so the arms stay "
             f"paired; every metric recomputed from `results/examples.parquet`). Where a "
             f"metric has no per-example form it is the t-interval over seeds (column "
             f"*interval over*); the t-interval over seeds alone is beside it. Seeds that "
             f"share a `data_seed` share one test split: its sampling is in the first "
             f"interval, not in the t-interval.\n", "## Verdicts\n"]
    if verdicts:
        parts += [verdict_markdown(verdicts), ""]
        for verdict in verdicts:
            if verdict.per_cell:
                parts.append(f"<details><summary>{verdict.claim.id}: per cell</summary>\n\n"
                             + "\n".join(f"- {c}" for c in verdict.per_cell)
                             + "\n\n</details>\n")
    elif partial and space.claims:
        parts.append(f"**{partial}**: the sweep was interrupted, and no verdict is drawn "
                     f"from part of a run; resume it (`--resume`) and the claims get theirs.\n")
    elif search and space.claims:
        parts.append(f"Claims need a grid sweep, every trial run to its end; this sweep "
                     f"{search_text(search)}: {len(space.claims)} claims skipped. Run the "
                     f"grid at the values it found: `--set-from results/best.json`.\n")
    else:
        parts.append("This sweep declares no claim of the documents.\n")
    sweep = SweepResults(trials=table, ood=ood, dataset=dataset, tables=tables)
    for beside in space.beside:
        markdown = beside.render(sweep)
        if markdown:
            parts += [f"## {beside.heading}\n", markdown, ""]
    if defense_dir is not None and (defense_dir / "tables.md").exists():
        parts += [f"## Thesis Tables 4.1-4.4 (the defense, `{defense_dir.name}`)\n",
                  (defense_dir / "tables.md").read_text().split("\n", 1)[1], ""]
    record = Path(sweep_dir) / PROVENANCE_FILE
    parts.append(provenance_markdown(json.loads(record.read_text()) if record.exists()
                                     else None))
    return "\n".join(parts) + "\n", verdicts


def partial_run(table: pd.DataFrame) -> str:
    """"partial: 3 of 8 trials ended" for a sweep whose trials were interrupted (none:
    "")."""
    if "status" not in table or not (table["status"] == "interrupted").any():
        return ""
    ended = int((table["status"] != "interrupted").sum())
    return f"partial: {ended} of {len(table)} trials ended"


def write_reproduction(space: SearchSpace, sweep_dir: str | Path, table: pd.DataFrame,
                       tables: dict[str, pd.DataFrame], settings: dict,
                       examples: pd.DataFrame | None = None) -> list[Verdict]:
    """Write `<sweep_dir>/REPRODUCTION.md`; return the verdicts."""
    markdown, verdicts = reproduction_report(space, Path(sweep_dir), table, tables, settings,
                                             examples)
    (Path(sweep_dir) / FILE).write_text(markdown)
    return verdicts


def rewrite_reproduction(sweep_dir: str | Path) -> list[Verdict]:
    """REPRODUCTION.md of a finished sweep, from its files alone (after a job on it adds
    results, e.g. the defense's)."""
    record = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    space = get_search_space(record["name"])
    table, artifacts = load_results(sweep_dir)
    return write_reproduction(space, sweep_dir, table, artifacts.tables,
                              recorded_settings(record, space), artifacts.examples)


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    """One console line per claim: `holds        gffn_ece_below_ffn: -0.012 [-0.02, -0.004]
    (3 seeds; 8 of 8 cells hold)`."""
    return [f"{v.verdict:<12} {v.claim.id}: {natural_interval(v)} "
            f"({v.seeds} seed{'s' if v.seeds != 1 else ''}; {v.detail})" for v in verdicts]


def verdict_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    """The verdicts as a table (the W&B summary run's `claims`)."""
    return pd.DataFrame([{"claim": v.claim.id, "statement": v.claim.statement,
                          "source": v.claim.source, "verdict": v.verdict,
                          "quantity": quantity(v.claim)[0], "ours": natural_interval(v),
                          "interval_over": v.covers,
                          "seeds_t_interval": natural_interval(v, seeds_only=True),
                          "seeds": v.seeds,
                          "detail": v.detail} for v in verdicts])
