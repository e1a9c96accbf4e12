"""Non-finite losses during training: counted on the device without a per-step wait, reported at log points, and
a run of them stops the job (`--max-nonfinite-steps`)."""
from __future__ import annotations

import logging

import torch

from . import distributed
from .distributed import DistEnv
from .errors import TrainingDiverged

notices = logging.getLogger("resnext")


class LossHealth:
    """Counts non-finite losses on the device (no sync per step) and reads them at log points."""

    def __init__(self, device: torch.device, limit: int) -> None:
        self.limit = limit
        self.consecutive = torch.zeros((), dtype=torch.int64, device=device)
        self.total = torch.zeros((), dtype=torch.int64, device=device)
        self.last_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.reported = 0

    def observe(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss)
        self.consecutive = torch.where(bad, self.consecutive + 1, torch.zeros_like(self.consecutive))
        self.total += bad
        self.last_bad_step = torch.where(bad, torch.full_like(self.last_bad_step, step), self.last_bad_step)

    def check(self, env: DistEnv) -> None:
        """Warn about new non-finite losses; stop after too many in a row. Every rank decides from the counts of all
        ranks, so no rank leaves while the others wait in a collective."""
        counts = torch.stack([self.total, self.consecutive, self.last_bad_step])
        total, consecutive, last = (int(v) for v in distributed.all_reduce_max(counts, env))
        if total > self.reported:
            notices.warning(f"warning: non-finite loss in {total - self.reported} step(s), the last at global step "
                            f"{last}; those updates were skipped.")
            self.reported = total
        if consecutive >= self.limit:
            raise TrainingDiverged(
                f"training stopped: the loss was not finite for {consecutive} consecutive steps (last at global step "
                f"{last}); the last good checkpoint is kept. Lower --lr, use --grad-clip, or --precision amp-bf16.")
