"""The retention policy's state machine over many devices at once: `step` with a batch axis.

`step` (client/policy.py) is the device's reference: one device, one day, with the human-readable
reason and the ordered notes the device logs. A what-if over 10^5 devices needs the same decisions
for every device on one day in one numpy pass. `step_batch` takes the policy state of n devices as
arrays and one day's inputs for each, and returns the new state and each device's action, reason
code and recall content: exactly `step`'s (tests/test_policy_batch.py checks every field on the
policy golden vectors and on random device-days, hypothesis-generated).

Encodings (what a port would keep as plain integers):

* signals: a bit per `SIGNAL_NAMES` entry (bit j = SIGNAL_NAMES[j]);
* segment: index into `SEGMENTS`; action: index into `ACTIONS`; reason: index into `REASON_CODES`;
* responses: an (n, R) array of answers in time order, 0 none (padding), 1 accepted, 2 rejected;
* consent: 0 none, 1 opt_in, 2 opt_out;
* days that are "None" in `PolicyState` are `NONE` (a large negative number).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedchurn.client.policy import (
    CONTENT_KINDS,
    R_BETWEEN_SENDS,
    R_COOLDOWN,
    R_EPISODE_START,
    R_FOLLOW_UP,
    R_MONTHLY_CAP,
    R_NO_RISK,
    R_OPTED_OUT,
    R_PROMOTION_QUIET,
    R_RECOVERED,
    R_SIGNAL_LOW_RISK,
    REASON_CODES,
    SEGMENTS,
    PolicyConfig,
    PolicyInput,
    PolicyState,
)
from fedchurn.client.signals import SIGNAL_NAMES

__all__ = [
    "ACTIONS",
    "CONSENTS",
    "MAX_SEND_DAYS",
    "NONE",
    "RESPONSES",
    "BatchInput",
    "BatchOutput",
    "BatchState",
    "month_indices",
    "signal_bit_arrays",
    "signal_bits",
    "step_batch",
]

NONE = -(1 << 62)
MAX_SEND_DAYS = 62  # an episode's handled send days are bits of an int64
ACTIONS: tuple[str, ...] = ("none", "recall", "alert_only")
RESPONSES: tuple[str | None, ...] = (None, "accepted", "rejected")
CONSENTS: tuple[str | None, ...] = (None, "opt_in", "opt_out")
_RECALL, _ALERT = 1, 2
_CODE = {c: i for i, c in enumerate(REASON_CODES)}
_Int = np.ndarray


def month_indices(days: _Int) -> _Int:
    """`month_index` of many local days: year × 12 + month − 1."""
    months = np.asarray(days, dtype=np.int64).astype("datetime64[D]").astype("datetime64[M]")
    return months.astype(np.int64) + 1970 * 12


def signal_bits(names: frozenset[str] | set[str] | tuple[str, ...]) -> int:
    """The bitmask of a set of signal names (a name given twice is one bit, as `step` counts it)."""
    return sum(1 << SIGNAL_NAMES.index(n) for n in set(names))


def signal_bit_arrays(firing: Mapping[str, np.ndarray]) -> np.ndarray:
    """`signals()`'s output (one boolean array per signal name) as one array of bitmasks."""
    out = np.zeros(np.shape(firing[SIGNAL_NAMES[0]]), dtype=np.int64)
    for j, name in enumerate(SIGNAL_NAMES):
        out |= np.asarray(firing[name]).astype(np.int64) << j
    return out


@dataclass
class BatchState:
    """`PolicyState` of n devices, one array per field (episode_handled as a bitmask over the
    episode's send days: bit k = `episode_send_days[k]` sent or skipped)."""

    last_day: _Int
    month: _Int
    month_recalls: _Int
    episode_start: _Int
    episode_handled: _Int
    cooldown_until: _Int
    consecutive_rejections: _Int
    opted_out: np.ndarray

    @classmethod
    def fresh(cls, n: int) -> BatchState:
        none = np.full(n, NONE, dtype=np.int64)
        zero = np.zeros(n, dtype=np.int64)
        return cls(
            none.copy(),
            np.full(n, -1, np.int64),
            zero.copy(),
            none.copy(),
            zero.copy(),
            none,
            zero,
            np.zeros(n, bool),
        )

    def state(self, i: int, cfg: PolicyConfig) -> PolicyState:
        """Device i's state as `step` keeps it."""

        def opt(v: np.integer) -> int | None:
            return None if int(v) == NONE else int(v)

        sends = cfg.episode_send_days
        mask = int(self.episode_handled[i])
        return PolicyState(
            last_day=opt(self.last_day[i]),
            month=int(self.month[i]),
            month_recalls=int(self.month_recalls[i]),
            episode_start=opt(self.episode_start[i]),
            episode_handled=tuple(d for k, d in enumerate(sends) if mask >> k & 1),
            cooldown_until=opt(self.cooldown_until[i]),
            consecutive_rejections=int(self.consecutive_rejections[i]),
            opted_out=bool(self.opted_out[i]),
        )

    def where(self, mask: np.ndarray, other: BatchState) -> BatchState:
        """This state where `mask`, `other` elsewhere (devices that did not run today keep theirs)."""
        return BatchState(
            *(np.where(mask, a, b) for a, b in zip(self._fields(), other._fields(), strict=True))
        )

    def _fields(self) -> tuple[np.ndarray, ...]:
        return (
            self.last_day,
            self.month,
            self.month_recalls,
            self.episode_start,
            self.episode_handled,
            self.cooldown_until,
            self.consecutive_rejections,
            self.opted_out,
        )


@dataclass
class BatchInput:
    """One day's `PolicyInput` for n devices."""

    day: _Int
    probability: np.ndarray
    segment: _Int
    promotion: np.ndarray
    signals: _Int  # bitmask
    quieted: _Int  # bitmask
    responses: _Int  # (n, R): answers in time order; 0 none, 1 accepted, 2 rejected
    consent: _Int  # 0 none, 1 opt_in, 2 opt_out

    @classmethod
    def of(cls, inputs: list[PolicyInput]) -> BatchInput:
        """From device inputs (what the tests compare with `step`)."""
        width = max((len(i.responses) for i in inputs), default=0)
        responses = np.zeros((len(inputs), width), dtype=np.int64)
        for k, i in enumerate(inputs):
            responses[k, : len(i.responses)] = [RESPONSES.index(r) for r in i.responses]
        return cls(
            np.array([i.day for i in inputs], dtype=np.int64),
            np.array([i.probability for i in inputs], dtype=np.float64),
            np.array([SEGMENTS.index(i.segment) for i in inputs], dtype=np.int64),
            np.array([i.promotion for i in inputs], dtype=bool),
            np.array([signal_bits(i.signals) for i in inputs], dtype=np.int64),
            np.array([signal_bits(i.quieted) for i in inputs], dtype=np.int64),
            responses,
            np.array([CONSENTS.index(i.consent) for i in inputs], dtype=np.int64),
        )


@dataclass
class BatchOutput:
    """Each device's decision: action index, reason-code index, recall content index into
    `CONTENT_KINDS` (-1 unless a recall), and the episode day (0 when none runs)."""

    action: _Int
    reason: _Int
    content: _Int
    episode_day: _Int


def _relevant_masks(cfg: PolicyConfig) -> _Int:
    """Per segment, the bitmask of signals that count for it (universal + the segment's own)."""
    return np.array(
        [signal_bits((*cfg.universal_triggers, *cfg.segment_triggers.get(s, ()))) for s in SEGMENTS],
        dtype=np.int64,
    )


def step_batch(
    state: BatchState, inp: BatchInput, cfg: PolicyConfig | None = None
) -> tuple[BatchState, BatchOutput]:
    """Decide one day for every device: `step` applied to each (state_i, input_i)."""
    cfg = cfg or PolicyConfig()
    day = inp.day
    if len(cfg.episode_send_days) > MAX_SEND_DAYS:
        raise ValueError(f"step_batch keeps an episode's send days in a bitmask: at most {MAX_SEND_DAYS}")
    if np.any((state.last_day != NONE) & (day <= state.last_day)):
        raise ValueError("a device's day is not after its last decided day")
    if np.any((inp.segment < 0) | (inp.segment >= len(SEGMENTS))):
        raise ValueError("unknown segment index")
    if np.any((inp.responses < 0) | (inp.responses >= len(RESPONSES))):
        raise ValueError("unknown response code (0 none, 1 accepted, 2 rejected)")
    if np.any((inp.consent < 0) | (inp.consent >= len(CONSENTS))):
        raise ValueError("unknown consent code (0 none, 1 opt_in, 2 opt_out)")
    E = cfg.episode_days
    sends = np.array(cfg.episode_send_days, dtype=np.int64)
    month = month_indices(day)
    month_recalls = np.where(month == state.month, state.month_recalls, 0)
    ep, handled, cooldown = (
        state.episode_start.copy(),
        state.episode_handled.copy(),
        state.cooldown_until.copy(),
    )
    rejections, opted_out = state.consecutive_rejections.copy(), state.opted_out.copy()

    # 1. An episode past its last day is over.
    over = (ep != NONE) & (day - ep + 1 > E)
    cooldown = np.where(over, ep + E - 1 + cfg.cooldown_days, cooldown)
    ep, handled = np.where(over, NONE, ep), np.where(over, 0, handled)

    # 2. The answers to earlier recalls in time order, then today's marketing choice.
    for r in np.asarray(inp.responses, dtype=np.int64).reshape(len(day), -1).T:
        accepted, rejected = r == 1, r == 2
        rejections = np.where(accepted, 0, rejections + rejected)
        end_acc = accepted & (ep != NONE)
        cooldown = np.where(end_acc, day + cfg.cooldown_days, cooldown)
        ep, handled = np.where(end_acc, NONE, ep), np.where(end_acc, 0, handled)
        opted_out = opted_out | (rejected & (rejections >= cfg.rejections_to_opt_out))
    opted_out = np.where(inp.consent == 2, True, np.where(inp.consent == 1, False, opted_out))
    rejections = np.where(inp.consent == 1, 0, rejections)
    cancel = opted_out & (ep != NONE)
    ep, handled = np.where(cancel, NONE, ep), np.where(cancel, 0, handled)

    # 3. Today's risk (`triggers_for`).
    p = inp.probability
    high = np.where(inp.promotion, cfg.high_risk_during_promotion, cfg.high_risk)
    relevant = _relevant_masks(cfg)[inp.segment]
    firing = (inp.signals & relevant) != 0
    confirmed = p >= cfg.signal_min_probability
    at_risk = (p >= high) | (firing & confirmed)
    low = firing & ~confirmed
    quiet = (inp.promotion & (cfg.high_risk <= p) & (p < high)) | (
        (inp.quieted & relevant & ~inp.signals) != 0
    )

    # 4. The decision, branch by branch as in `step` (first matching branch wins).
    n = len(day)
    reason = np.full(n, _CODE[R_NO_RISK], dtype=np.int64)
    action = np.zeros(n, dtype=np.int64)
    ep_day = np.where(ep != NONE, day - ep + 1, 0)
    capped = month_recalls >= cfg.max_recalls_per_month

    b_out = opted_out
    reason = np.where(b_out & (at_risk | low), _CODE[R_OPTED_OUT], reason)

    b_ep = ~b_out & (ep != NONE)
    bits = np.arange(len(sends), dtype=np.int64)
    due_bits = (sends[None, :] <= ep_day[:, None]) & ((handled[:, None] >> bits[None, :]) & 1 == 0)
    due = (due_bits.astype(np.int64) << bits[None, :]).sum(axis=1)
    none_due = b_ep & (due == 0)
    recovered = b_ep & (due != 0) & ~at_risk & (p < cfg.follow_up_min_probability)
    ep_capped = b_ep & (due != 0) & ~recovered & capped
    follow = b_ep & (due != 0) & ~recovered & ~capped
    reason = np.where(none_due, _CODE[R_BETWEEN_SENDS], reason)
    reason = np.where(recovered, _CODE[R_RECOVERED], reason)
    reason = np.where(ep_capped, _CODE[R_MONTHLY_CAP], reason)
    reason = np.where(follow, _CODE[R_FOLLOW_UP], reason)
    handled = np.where(ep_capped | follow, handled | due, handled)
    cooldown = np.where(recovered, day + cfg.cooldown_days, cooldown)
    ep, handled = np.where(recovered, NONE, ep), np.where(recovered, 0, handled)

    b_risk = ~b_out & ~b_ep & at_risk
    cooling = b_risk & (cooldown != NONE) & (day <= cooldown)
    new_capped = b_risk & ~cooling & capped
    start = b_risk & ~cooling & ~capped
    reason = np.where(cooling, _CODE[R_COOLDOWN], reason)
    reason = np.where(new_capped, _CODE[R_MONTHLY_CAP], reason)
    reason = np.where(start, _CODE[R_EPISODE_START], reason)
    ep, handled = np.where(start, day, ep), np.where(start, 1, handled)

    rest = ~b_out & ~b_ep & ~at_risk
    reason = np.where(rest & low, _CODE[R_SIGNAL_LOW_RISK], reason)
    reason = np.where(rest & ~low & quiet, _CODE[R_PROMOTION_QUIET], reason)

    recall = follow | start
    month_recalls = month_recalls + recall
    action = np.where(recall, _RECALL, np.where(at_risk | low | (reason == _CODE[R_MONTHLY_CAP]), _ALERT, 0))
    seg_content = np.array([CONTENT_KINDS.index(cfg.recall_content[s]) for s in SEGMENTS], dtype=np.int64)
    content = np.where(recall, seg_content[inp.segment], -1)
    ep_day_out = np.where(ep != NONE, day - ep + 1, 0)

    new = BatchState(day.copy(), month, month_recalls, ep, handled, cooldown, rejections, opted_out)
    return new, BatchOutput(action, reason, content, ep_day_out)
