"""Sweeps on Ray Tune: the experiment (`experiment`), `--set` overrides and pre-flight checks
(`overrides`), the Tune trainable (`trainable`) that runs a train loop (`loops`) in the
trial's process or on Ray Train through a `Session` (`session`), and the checkpoint
retention that keeps what a resume needs (`checkpoint_retention`)."""
