"""PPO over several processes (`accelerate launch` / torchrun), written out like CleanRL's ppo_multigpu: no DDP
wrapper, no framework — four collective operations that can be read.

    - every rank builds the same models (same seed) and rolls out a contiguous share of each global batch
      (`shard`), sampling with seeds that depend on the global position, so two processes sample what one would;
    - after the backward passes of a minibatch the gradients of the trainable parameters are summed across ranks
      (`sum_gradients`; each rank's loss is already scaled by the *global* minibatch size), so every rank takes
      the same optimizer step and the weights stay identical;
    - the statistics PPO needs over the whole batch — reward normalisation, advantage whitening, the value warm-up,
      the KL controller's mean KL, the early-stop test and every logged number — are summed across ranks (`total`);
    - rank 0 writes files (metrics, evaluations, checkpoints); the others wait at a `barrier`.

With one process every call here is the identity, so the single-process loop is the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """One process, or the process group `accelerate launch` / torchrun describe in RANK / WORLD_SIZE (gloo on
        CPUs, nccl on GPUs; each rank on GPU LOCAL_RANK)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def shard(self, n: int) -> range:
        """This rank's contiguous share of n items (sizes differ by at most one)."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a new tensor; the identity with one process)."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        on = x.device
        if dist.get_backend() == "nccl" and on.type != "cuda":  # nccl reduces GPU tensors only
            on = torch.device("cuda", torch.cuda.current_device())
        out = x.detach().to(on, copy=True)
        dist.all_reduce(out)
        return out.to(x.device)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key mean over ranks of this rank's numbers (for the logs)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        summed = self.total(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
        return {k: float(v) / self.world for k, v in zip(keys, summed.tolist(), strict=True)}

    def gather(self, values: list) -> list:
        """Every rank's values (numbers, records), in rank order."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        parts: list[list | None] = [None] * self.world
        dist.all_gather_object(parts, list(values))
        return [v for part in parts for v in part or []]

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients in one flat buffer; a rank with no episode in this minibatch adds 0."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = self.total(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
