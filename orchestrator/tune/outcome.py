"""A sweep's ending, after Tune's fit: its results written (tables, plots, the search's
best.json and search.md, the claims' verdicts), its W&B summary run, the console's last
lines and the process exit code. An interrupted fit (trials Tune had not ended:
`orchestrator.tune.endings`) writes what its trials reported, but no search result as if
the search were whole, and ends with the command that resumes it.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_NO_RESULTS, EXIT_UNFINISHED
from orchestrator.interrupts import exit_code, first_signal
from orchestrator.reports.collect import (
    EPOCHS_TABLE,
    collect_results,
    status_counts,
    write_results,
)
from orchestrator.reports.reproduction import FILE as REPRODUCTION_FILE
from orchestrator.reports.reproduction import (
    partial_run,
    verdict_frame,
    verdict_lines,
    write_reproduction,
)
from orchestrator.reports.search import (
    BEST_FILE,
    SEARCH_FILE,
    best_line,
    write_search_report,
)
from orchestrator.reports.tables import markdown_table
from orchestrator.tracking import runs as tracking
from orchestrator.tune.plan import SweepPlan
from search_spaces import SearchSpace

RAY_LOG = "ray.log"


def summary_run(mode: str, run_name: str, record: dict[str, Any], table, artifacts,
                results: Path, verdicts: list | None = None,
                search_tables: dict | None = None, partial: str = "") -> None:
    """The sweep's results in W&B, where it is monitored: one run in the sweep's group
    (job_type "summary") with the trials table, the table over seeds (`aggregated`), the
    long tables (ood, diagnostic and the study's own), the claims' verdicts (table
    `claims`, summary `claims/<id>`) and every plot; an interrupted sweep's summary says
    `partial` ("partial: 3 of 8 trials ended") and has no verdicts. A resumed sweep updates
    the same run."""
    run_id = "summary-" + hashlib.sha1(run_name.encode()).hexdigest()[:12]
    run = tracking.JobRun(mode, "summary", f"{run_name}-summary", run_name, record,
                          results.parent / "summary", run_id=run_id)
    run.table("trials", table)
    if (results / "aggregated.csv").exists():
        import pandas as pd

        run.table("aggregated", pd.read_csv(results / "aggregated.csv"))
    for name, frame in {**artifacts.tables, **(search_tables or {})}.items():
        run.table(name, frame)  # ood, diagnostic, the study's own; a search's best trials
    for plot in sorted((results / "plots").glob("*.png")):
        run.image(f"plots/{plot.stem}", plot)
    if verdicts:
        run.table("claims", verdict_frame(verdicts))
    statuses = table["status"].value_counts().to_dict() if "status" in table else {}
    run.finish({"trials": len(table), **{f"status/{k}": v for k, v in statuses.items()},
                "partial": partial or False,
                **{f"claims/{v.claim.id}": v.verdict for v in verdicts or []}})


def finish_sweep(plan: SweepPlan, space: SearchSpace, run_name: str, local_dir: Path,
                 record: dict[str, Any], result_grid, filesystem, fitted: bool,
                 unfinished: list[str] | None, wall: float) -> int:
    """Write the sweep's results from Tune's `result_grid` (`fitted`: the fit returned;
    `unfinished`: the trials Tune had not ended when it did, None if unseen), print its
    last lines and return the exit code: 0, every trial completed or diverged; 1
    (EXIT_UNFINISHED), some errored or did not finish; 130 / 143, interrupted by SIGINT /
    SIGTERM (`orchestrator.interrupts`: no verdicts from a partial run); 3
    (EXIT_NO_RESULTS), no trial completed."""
    search, settings = plan.search, record["settings"]
    interrupted = bool(unfinished)
    # A trial Tune ended before its last epoch (a fit that returned) a scheduler "stopped";
    # one it had not ended when the fit was interrupted is "interrupted".
    table, artifacts = collect_results(
        result_grid, filesystem, stopped_early=search.stops_trials and fitted,
        epochs=search.is_search, interrupted=unfinished or ())
    out = write_results(table, artifacts, space, local_dir, settings)
    if interrupted:  # no search result from part of a search
        for name in (BEST_FILE, SEARCH_FILE):
            (out / name).unlink(missing_ok=True)
        search_tables = {}
    else:
        search_tables = write_search_report(table, settings["search"], out,
                                            grid=not search.is_search,
                                            epochs=artifacts.table(EPOCHS_TABLE))
    # no verdict from part of a grid either (`partial_run`: REPRODUCTION.md says so)
    verdicts = write_reproduction(space, local_dir, table, artifacts.tables, settings,
                                  artifacts.examples)
    partial = partial_run(table)
    print(f"\n[sweep] {space.name} / {plan.profile_name}: {len(table)} trials in "
          f"{wall:.1f} s\n")
    print(markdown_table(table, space))
    written = ", ".join(["trials.csv, trials.md, aggregated.csv, aggregated.md",
                         *(f"{name}.csv" for name in artifacts.tables),
                         *(p.name for p in sorted(out.glob("*.md"))
                           if p.stem in artifacts.tables)])
    print(f"\n[sweep] results: {out}/{{{written}}}, plots/")
    if interrupted:
        print(f"[sweep] interrupted: {len(unfinished)} of {len(table)} trials had not "
              f"ended; no {BEST_FILE} or {SEARCH_FILE} from a partial run")
    else:
        print(best_line(out))
    if verdicts:
        print(f"[sweep] the documents' claims ({local_dir / REPRODUCTION_FILE}):")
        for line in verdict_lines(verdicts):
            print(f"  {line}")
    elif search.is_search and space.claims and not interrupted:
        then = ("set the values found with --set" if search.perturbs else
                f"run the grid with --set-from {out / BEST_FILE}")
        print(f"[sweep] the documents' claims need a grid sweep, every trial run to its "
              f"end: skipped; {then}")
    summary_run(plan.wandb, run_name, record, table, artifacts, out, verdicts,
                search_tables, partial)
    note = tracking.sync_instructions(local_dir)
    if note:
        print(note)
    statuses = table["status"].value_counts().to_dict() if "status" in table else {}
    print(f"[sweep] status: {statuses}", flush=True)
    if interrupted:
        signum = first_signal()
        by = f" by {signal.Signals(signum).name}" if signum else ""
        print(f"[sweep] interrupted{by} ({status_counts(table)}; {partial}: no verdicts); "
              f"resume with: {plan.resume_command()}", file=sys.stderr, flush=True)
        return exit_code(signum) if signum else EXIT_UNFINISHED
    if not statuses.get("completed"):
        print(f"[sweep] no trial completed ({status_counts(table)}); the tables hold what "
              f"they reported, see {local_dir / RAY_LOG} for errors", file=sys.stderr)
        return EXIT_NO_RESULTS
    if statuses.get("error") or statuses.get("incomplete"):
        print(f"[sweep] some trials did not finish; resume with: {plan.resume_command()}",
              file=sys.stderr)
        return EXIT_UNFINISHED
    return 0
