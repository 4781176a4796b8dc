"""Actor pools: Ray actors that each hold one model and compute units of work, written to a
job directory that survives failures. `base` (actors), `units` (job directories, unit
files, seeds), `progress`, `attack` (attacks and attacks on detectors, with `stage_plan`),
`langevin` (restoration chains)."""
