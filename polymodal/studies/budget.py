"""A study's time budget (`--time-limit`), shared fairly: each model fitted gets the time left divided by the
fits still to come, so what one entry or trial saves by stopping early goes to the next ones. Each fit stops
within its share through `train.time_limit` (keeping its best epoch so far) and says so in its metrics."""

from __future__ import annotations

import time

from polymodal.errors import UserError

MIN_SHARE = 1.0  # seconds: a fit whose budget is spent still trains a little, so every entry has a model


class Budget:
    def __init__(self, seconds: float, fits: int):
        if not seconds > 0:
            raise UserError(f"the time limit must be a positive number of seconds, not {seconds}")
        self.seconds = float(seconds)
        self.deadline = time.monotonic() + self.seconds
        self.left = max(int(fits), 0)

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def share(self, cap: float | None = None) -> float:
        """The next fit's seconds: the time left over the fits left (at least MIN_SHARE), and at most `cap` (a
        limit the config already sets per fit)."""
        share = max(MIN_SHARE, self.remaining() / max(self.left, 1))
        return share if cap is None else min(share, cap)

    def spent(self) -> None:
        """One fit is done (or was finished before and reused)."""
        self.left = max(self.left - 1, 0)


def cut_short(metrics: dict) -> dict:
    """What a fit's metrics say of the time limit, for a leaderboard or trial table."""
    return {"time_limited": bool(metrics.get("time_limited")), "stopped_epoch": metrics.get("stopped_epoch")}
