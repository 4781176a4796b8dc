"""Redraw a sweep's table and plots from its saved results:
`python -m orchestrator.report SWEEP_DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.cli import run_command
from orchestrator.errors import NoResultsError, UsageError
from orchestrator.reports.collect import (
    EPOCHS_TABLE,
    RESULTS_DIR,
    SWEEP_FILE,
    load_results,
    recorded_settings,
    render_outputs,
    status_counts,
)
from orchestrator.reports.reproduction import FILE as REPRODUCTION_FILE
from orchestrator.reports.reproduction import verdict_lines, write_reproduction
from orchestrator.reports.search import (
    best_line,
    search_of,
    with_searched_keys,
    write_search_report,
)
from orchestrator.reports.tables import markdown_table
from search_spaces import get_search_space


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report",
        description="Redraw the results tables (markdown: per trial, and over seeds with "
                    "95%% intervals) and plots (PNG) of a finished sweep from the files in "
                    "SWEEP_DIR/results/, and write SWEEP_DIR/REPRODUCTION.md: a verdict on "
                    "each claim of the documents the sweep tests, the documents' tables "
                    "beside ours, and what produced the numbers.")
    parser.add_argument("sweep_dir", help="a sweep directory, e.g. runs/batch_size_gffn-local-...")
    return parser


def main(args: argparse.Namespace) -> int:
    sweep_dir = Path(args.sweep_dir)
    meta_path = sweep_dir / SWEEP_FILE
    if not (sweep_dir / RESULTS_DIR / "trials.csv").exists() or not meta_path.exists():
        raise UsageError(f"{sweep_dir} has no {SWEEP_FILE} and {RESULTS_DIR}/trials.csv: not "
                         f"a finished sweep directory")
    record = json.loads(meta_path.read_text())
    settings = recorded_settings(record, get_search_space(record["name"]))
    space = with_searched_keys(get_search_space(record["name"]), settings)
    table, artifacts = load_results(sweep_dir)
    out = sweep_dir / RESULTS_DIR
    render_outputs(table, artifacts, space, out, settings)
    if settings.get("search"):
        write_search_report(table, settings["search"], out,
                            grid=search_of(settings) is None,
                            epochs=artifacts.table(EPOCHS_TABLE))
    verdicts = write_reproduction(space, sweep_dir, table, artifacts.tables, settings,
                                  artifacts.examples)
    print(markdown_table(table, space))
    drawn = "trials.md, aggregated.md" + (", ood.md" if not artifacts.ood.empty else "")
    print(f"\n[report] {out}: {drawn} and plots/ redrawn")
    print(best_line(out).replace("[sweep]", "[report]"))
    print(f"[report] {sweep_dir / REPRODUCTION_FILE}: " + (
        f"{len(verdicts)} claims" if verdicts else "no claims declared; the documents' "
        "tables and provenance"))
    for line in verdict_lines(verdicts):
        print(f"  {line}")
    if "status" in table and not (table.status == "completed").any():
        raise NoResultsError(f"no trial of {sweep_dir} completed "
                             f"({status_counts(table)}): the tables above are all there is")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(build_parser(), main))
