"""Inputs that move: attacks (PGD, APGD on any score, AutoAttack), Langevin chains, the
defenses of document 005, and document 003's feature purification."""
