"""How simulated users answer a recall: the what-if lab's response model.

The population generator (`population.py`) writes each device's no-recall history and its latent
outcome (`churn_day`, the first day of the 14-day silence; the true segment). This module says what a
recall delivered on a day does to that outcome. It draws from its own hash streams (`lab_uniforms`),
keyed like the generator's, so:

* a device's no-recall history is untouched (the generator does not change, the control arm is it);
* every arm of a what-if sees the same user answer the same way to the same recall on the same day
  (common random numbers: differences between arms are the policies', not the dice's).

The model, per recall on day d to a user of true segment s (docs/population.md, "Answers to a
recall", gives the calibration against the figures it is held to):

* **accepts** with probability `accept[s]` × `mismatch` (when the content is not the kind that speaks
  to the segment) × 0.5^(silent days / `silence_half_life_days`) × `fatigue`^(recalls in the previous
  30 days). A user who accepts while their churn lies within `reach_days` comes back: the churn is
  averted. Accepting changes nothing for a user who was staying anyway.
* **over-contact**: every recall beyond `tolerance` in 30 days may bring a complaint, the user's own
  opt-out from marketing, and (for a user who was staying) a backlash churn the next day.
* **opted out and gone, back by themselves**: a churned user taken off the marketing list after
  `rejections_to_opt_out` rejections comes back by themselves within 30 days with probability
  `self_return_30d` (on a uniform day of the 30).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from fedchurn.client.policy import CONTENT_KINDS, SEGMENTS, PolicyConfig

__all__ = ["NO_CHURN", "PREFERRED_CONTENT", "Draw", "ResponseModel"]

NO_CHURN = 1 << 40  # churn day of a user who stays
# The content kind that speaks to each true segment (new features for utility users, content for
# content users, friend activity for social users, offers for price-sensitive users).
PREFERRED_CONTENT = np.array(
    [CONTENT_KINDS.index(PolicyConfig().recall_content[s]) for s in SEGMENTS], dtype=np.int64
)


class Draw:
    """The lab's draws: one `population.lab_uniforms` stream each."""

    ACCEPT = 1
    COMPLAINT = 2
    OPT_OUT = 3
    BACKLASH = 4
    SELF_RETURN = 5
    SELF_RETURN_DAY = 6
    RANDOM_TARGET = 7


@dataclass(frozen=True)
class ResponseModel:
    """The knobs of the response model; defaults calibrated as docs/population.md states."""

    accept: tuple[float, float, float, float] = (0.32, 0.33, 0.33, 0.27)  # per SEGMENTS, matched content
    mismatch: float = 0.45  # acceptance multiplier when the content is not the segment's kind
    silence_half_life_days: float = 10.0  # acceptance halves every this many silent days
    fatigue: float = 0.7  # acceptance multiplier per recall in the previous 30 days
    reach_days: int = 30  # an accepted recall averts a churn starting within this many days
    tolerance: int = 2  # recalls in 30 days a user takes without over-contact effects
    complaint: float = 0.08  # per recall beyond tolerance
    opt_out: float = 0.06  # per recall beyond tolerance: the user takes themselves off the list
    backlash_churn: float = 0.02  # per recall beyond tolerance, for a user who was staying
    self_return_30d: float = 0.15  # churned users opted out after rejections, back within 30 days

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            values = v if isinstance(v, tuple) else (v,)
            if f.name in ("silence_half_life_days", "reach_days", "tolerance"):
                if not all(x > 0 for x in values):
                    raise ValueError(f"response model: {f.name} must be > 0, got {v}")
            elif not all(0.0 <= x <= 1.0 for x in values):
                raise ValueError(f"response model: {f.name} is a probability or a factor in [0, 1], got {v}")

    def acceptance(
        self, true_segment: np.ndarray, content: np.ndarray, silent_days: np.ndarray, recent: np.ndarray
    ) -> np.ndarray:
        """Probability that each recall is accepted."""
        base = np.asarray(self.accept)[true_segment]
        matched = content == PREFERRED_CONTENT[true_segment]
        return (
            base
            * np.where(matched, 1.0, self.mismatch)
            * 0.5 ** (np.maximum(silent_days, 0) / self.silence_half_life_days)
            * self.fatigue ** np.asarray(recent, dtype=np.float64)
        )
