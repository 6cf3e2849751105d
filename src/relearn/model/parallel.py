"""What lets N training processes train the model one process trains: collectives and shared dropout masks.

See :mod:`relearn.model.train` (the loop) and :mod:`relearn.model.distributed` (the processes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Ranks:
    """This process's place among the training processes; the collectives are no-ops for one process."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise float64 sum over the processes."""
        if self.world == 1:
            return np.asarray(values, dtype=np.float64)
        tensor = torch.tensor(np.asarray(values, dtype=np.float64))
        self.dist.all_reduce(tensor)
        return tensor.numpy()

    def gather(self, tensor: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        """The processes' 1-d tensors of ``sizes`` rows, concatenated in rank order, on every process."""
        if self.world == 1:
            return tensor
        padded = torch.zeros(max(sizes), dtype=tensor.dtype)  # all_gather needs equal shapes
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        self.dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


class SharedDropout:
    """Dropout masks drawn for the whole global batch, from a generator seeded alike in every process.

    A sample thus gets the same mask whichever process holds it, and N processes train what one process
    trains. The network's own ``nn.Dropout`` layers are set to eval (identity) while a forward hook applies
    the shared mask to the rows this process holds.
    """

    def __init__(self, net: torch.nn.Module, seed: int) -> None:
        self.layers = [m for m in net.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
        # Its own stream: the permutation generator has the plain seed.
        self.generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        )
        self.batch: int = 0
        self.rows: torch.Tensor | None = None
        self.handles = [layer.register_forward_hook(self._apply) for layer in self.layers]

    def take_over(self) -> None:
        """Switch the built-in (per-process) dropout off; call after every ``net.train()``."""
        for layer in self.layers:
            layer.eval()

    def set_batch(self, size: int, rows: torch.Tensor | None) -> None:
        """The next forward pass is a training step on ``rows`` (None: all) of a global batch of ``size``."""
        self.batch, self.rows = size, rows

    def _apply(self, layer: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self.batch == 0:  # evaluation
            return output
        # 32 random bits per unit, two per int64 draw (a third of torch.rand's cost); P(keep) = 1 - p.
        width = output.shape[1]
        bits = torch.randint(-(2**63), 2**63 - 1, (self.batch, (width + 1) // 2), generator=self.generator)
        keep = bits.view(torch.int32)[:, :width] >= round(layer.p * 2**32) - 2**31
        if self.rows is not None:
            keep = keep[self.rows]
        return output * keep / (1 - layer.p)

    def remove(self) -> None:
        """Detach the hooks: the trained network behaves like any FraudNet."""
        for handle in self.handles:
            handle.remove()
