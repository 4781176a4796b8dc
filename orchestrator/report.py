"""Redraw a sweep's table and plots from its saved results:
`python -m orchestrator.report SWEEP_DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.results import RESULTS_DIR, load_results, markdown_table, render_outputs
from orchestrator.sweep import EXIT_USAGE, SWEEP_FILE
from search_spaces import get_search_space


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report",
        description="Redraw the results tables (markdown) and plots (PNG) of a finished "
                    "sweep from the files in SWEEP_DIR/results/.")
    parser.add_argument("sweep_dir", help="a sweep directory, e.g. runs/batch_size_gffn-local-...")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    meta_path = sweep_dir / SWEEP_FILE
    if not (sweep_dir / RESULTS_DIR / "trials.csv").exists() or not meta_path.exists():
        print(f"{parser.prog}: error: {sweep_dir} has no {SWEEP_FILE} and "
              f"{RESULTS_DIR}/trials.csv: not a finished sweep directory", file=sys.stderr)
        return EXIT_USAGE
    space = get_search_space(json.loads(meta_path.read_text())["name"])
    table, artifacts = load_results(sweep_dir)
    out = sweep_dir / RESULTS_DIR
    render_outputs(table, artifacts, space, out)
    print(markdown_table(table, space))
    drawn = "trials.md, ood.md" if not artifacts.ood.empty else "trials.md"
    print(f"\n[report] {out}: {drawn} and plots/ redrawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
