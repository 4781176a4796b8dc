"""A trial's resources: how many data-parallel workers, and each one's CPUs and GPUs. Light
(no torch, no Ray at import), so that a command checks its flags before it loads either."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scaling:
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1
    max_failures: int = 2  # retries of a failed trial (Tune) or worker group (Train)

    @property
    def in_process(self) -> bool:
        return self.num_workers == 1 and self.gpus_per_worker == 0

    def trial_resources(self) -> dict[str, float]:
        """What Tune reserves for the trial process itself."""
        if self.in_process:
            return {"CPU": self.cpus_per_worker, "GPU": 0}
        # The trial only drives a TorchTrainer whose workers hold the CPUs and GPUs. Tune
        # needs a non-empty request: a nominal 1 MiB of memory, so that the trial never
        # blocks its own workers from the node's last CPU.
        return {"CPU": 0, "GPU": 0, "memory": 2**20}

    def total_resources(self) -> dict[str, float]:
        """What one trial needs in all: the unit for how many trials fit at once."""
        return {"CPU": self.num_workers * self.cpus_per_worker,
                "GPU": self.num_workers * self.gpus_per_worker}

    def scaling_config(self):
        from ray.train import ScalingConfig

        resources = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            resources["GPU"] = self.gpus_per_worker
        return ScalingConfig(num_workers=self.num_workers, use_gpu=self.gpus_per_worker > 0,
                             resources_per_worker=resources)
