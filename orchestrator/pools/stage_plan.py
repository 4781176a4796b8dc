"""Which units of a multi-stage attack can run now: the stages overlap as a wavefront, yet
form exactly the batches one serial pyautoattack call forms (NOTES.md C)."""

from __future__ import annotations


class StagePlan:
    """Which units of which stage can run now, in a multi-stage attack (AutoAttack).

    Stage s attacks the inputs that survived stages 0..s-1, in batches of `batch_size` in
    index order: exactly the batches of one serial pyautoattack call. The inputs of stage
    s+1 are known up to the last index covered by the *leading completed* units of stage s,
    so its first batches can run while stage s finishes: the stages overlap as a wavefront
    and the actors stay busy, yet every unit is the one the serial call forms.
    """

    def __init__(self, num_stages: int, first_inputs: list[int], batch_size: int):
        self.batch_size = batch_size
        self.inputs = [list(first_inputs)] + [[] for _ in range(num_stages - 1)]  # known
        self.inputs_final = [True] + [False] * (num_stages - 1)
        self.units: list[list[list[int]]] = [[] for _ in range(num_stages)]  # formed
        self.done: list[dict[int, list[bool]]] = [{} for _ in range(num_stages)]
        self.prefix = [0] * num_stages  # leading units of each stage that are complete

    def stage_finished(self, s: int) -> bool:
        formed = len(self.units[s]) * self.batch_size >= len(self.inputs[s])
        return self.inputs_final[s] and formed and self.prefix[s] == len(self.units[s])

    def finished(self) -> bool:
        return self.stage_finished(len(self.units) - 1)

    def new_units(self) -> list[tuple[int, int, list[int]]]:
        """(stage, start, indices) of the units that have become formable."""
        new = []
        for s in range(len(self.units)):
            while True:
                start = len(self.units[s]) * self.batch_size
                known = len(self.inputs[s])
                if not (known >= start + self.batch_size or
                        (self.inputs_final[s] and start < known)):
                    break
                index = self.inputs[s][start:start + self.batch_size]
                self.units[s].append(index)
                new.append((s, start, index))
            if s + 1 < len(self.units) and self.stage_finished(s):
                self.inputs_final[s + 1] = True
        return new

    def complete(self, s: int, unit: int, fooled: list[bool]) -> None:
        self.done[s][unit] = fooled
        while self.prefix[s] in self.done[s]:
            k = self.prefix[s]
            if s + 1 < len(self.units):
                self.inputs[s + 1] += [i for i, f in zip(self.units[s][k], self.done[s][k])
                                       if not f]
            self.prefix[s] += 1

    def units_done(self) -> int:
        return sum(len(d) for d in self.done)

    def fraction(self) -> float:
        """Finished stages plus the share of units done in the first unfinished one."""
        for s in range(len(self.units)):
            if not self.stage_finished(s):
                expected = -(-len(self.inputs[s]) // self.batch_size) if self.inputs_final[s] \
                    else max(len(self.units[s]), 1)
                return (s + len(self.done[s]) / max(expected, 1)) / len(self.units)
        return 1.0
