"""Inputs that move: attacks (PGD, APGD on any score, AutoAttack), Langevin chains, the
defenses of document 005, and document 003's feature purification."""


def unit_seed(seed: int, start: int) -> int:
    """The seed of the unit of work whose first input (or chain) has index `start`: a
    unit's randomness depends on its index range only, not on the process (an actor of a
    pool, or this one) that runs it."""
    return seed * 1_000_003 + start
