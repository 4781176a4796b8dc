"""Jobs on a finished sweep's trials: the trial's model and directories (`trial`), the attack
(`attack`), attacks on its OOD detectors (`detectors`), Langevin chains (`langevin`) and the
thesis' defense (`defense`, its sizes in `profiles`)."""
