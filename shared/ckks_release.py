"""What the CKKS key holder may release: the grid, the noise and the ranges a decrypted cohort
sum is held to, and the settings it refuses before anything opens.

Pure functions of the protection parameters, so that the key holder (which enforces them) and a
simulation's checks before it starts (which name the option to change) compute the same thing.
Each rule answers an attack found in review (docs/privacy.md, decisions 133-140).
"""

from __future__ import annotations

import math

from fedchurn.shared.protection import NOISE_TAIL_SIGMAS, ProtectionParams
from fedchurn.shared.wire import Reason

__all__ = [
    "CKKS_FLOOD_STD",
    "CKKS_GRID_BITS",
    "CKKS_LEFTOVER_BITS",
    "CKKS_MAX_ROOM",
    "CKKS_MIN_GRID",
    "CKKS_MIN_NOISE_STEPS",
    "CKKS_RANGE_SLACK",
    "ckks_chunk_sizes",
    "ckks_grid",
    "ckks_leftover_bits",
    "ckks_noise_free_error",
    "ckks_noise_std",
    "ckks_release_problem",
    "ckks_release_std",
    "ckks_rooms",
]

CKKS_GRID_BITS = 20  # decrypted CKKS sums are rounded to clip_norm / 2^20 before release (see privacy.md)
# CKKS decryption error is ~1e-8 per coordinate (measured); the range check tolerates far more.
CKKS_RANGE_SLACK = 1e-4
# The finest grid a released CKKS sum may use whatever the clip: 2^-21 (the default clip 0.5's
# grid), ~50x the decryption error at the pinned parameters (under 1e-8 in an attack on a 1e-12 clip).
CKKS_MIN_GRID = 2.0**-21
CKKS_MIN_NOISE_STEPS = 2**10  # noise, when there is any, spans at least this many grid steps
CKKS_MAX_ROOM = 2.0**17  # the largest honest cohort sum (plus noise) per coordinate
# Every release carries at least this much noise (review 9): an aggregator that adds a small
# polynomial to a ciphertext's second part puts a multiple of the secret key in what decrypts, up
# to the copy/imaginary tolerance (2^-20); with a std 2^16 times that, each release tells it
# ~2^-33 nats per coordinate about the key, where the noise-free one gave the key in 2 requests.
CKKS_FLOOD_STD = 2.0**-4
# A sum counting some device other than once leaves its mask over; the range check must let
# that through with chance at most 2^-64 (`ckks_leftover_bits`).
CKKS_LEFTOVER_BITS = 64


def ckks_grid(params: ProtectionParams) -> float:
    """What a released CKKS sum is rounded to: clip_norm / 2^20, never finer than
    `CKKS_MIN_GRID` (a tiny clip in the aggregator's request once released the decryption error
    itself, unrounded)."""
    clip = params.clip_norm if math.isfinite(params.clip_norm) else 0.0
    return max(clip / 2**CKKS_GRID_BITS, CKKS_MIN_GRID)


def ckks_noise_std(params: ProtectionParams, n_params: int) -> float:
    """The noise a CKKS release carries: the multiplier times the clip plus what rounding to the
    grid can add. The sum is rounded before the noise, so one device can move the rounded sum by
    its clip plus up to one step per coordinate (the aggregator adds offsets that put a rounding
    boundary in each): with a small clip, z * C alone let a device count for more than z allows
    (review 5). At the default clip the term is 2^-21 * sqrt(m), ~5e-5 of it."""
    m = params.n_coords(n_params)
    return params.noise_multiplier * (params.clip_norm + math.sqrt(m) * ckks_grid(params))


def ckks_release_std(params: ProtectionParams, n_params: int) -> float:
    """The std of the noise every CKKS release carries: the DP noise, but never less than
    `CKKS_FLOOD_STD` (whatever the request's multiplier, evaluations included) nor than 2^10
    steps of the grid (noise under a step rounds away: review 4)."""
    return max(ckks_noise_std(params, n_params), CKKS_FLOOD_STD, CKKS_MIN_NOISE_STEPS * ckks_grid(params))


def ckks_rooms(params: ProtectionParams, n_params: int, n_devices: int) -> tuple[float, float]:
    """(per-coordinate, L2) bounds a released CKKS sum of `n_devices` may reach: the honest sum's
    bounds plus the decryption's slack plus 8 sigma of noise. Anything beyond is refused."""
    m = params.n_coords(n_params)
    sigma = ckks_release_std(params, n_params)
    coord_bound, l2_bound = params.honest_sum_bounds(n_params, n_devices)
    slack = CKKS_RANGE_SLACK * (1 + n_devices * params.clip_norm)
    return (
        coord_bound + slack + NOISE_TAIL_SIGMAS * sigma,
        l2_bound + slack + sigma * (math.sqrt(m) + NOISE_TAIL_SIGMAS),
    )


def ckks_chunk_sizes(params: ProtectionParams, n_params: int) -> list[int]:
    """How many values each CKKS vector of an upload carries (`slots` each, the last the rest)."""
    m, slots = params.n_coords(n_params), params.ckks_poly_modulus // 2
    return [min(slots, m - i) for i in range(0, m, slots)]


def ckks_leftover_bits(params: ProtectionParams, n_params: int) -> float:
    """-log2 of the largest chance that a sum counting some device's ciphertext other than once
    passes the key holder's range check (decision 140).

    The aggregator may add to a chunk's sum p * c for any integer polynomial p (adding c k times,
    p = k; nothing else keeps the devices' scale and level, and mixing two ciphertexts' parts
    leaves a term uniform mod q). What decrypts is then the honest sum plus, in each slot j,
    sigma_j(p) * (x + u_j), where u_j is the device's mask, uniform on [-B, B) and independent
    per coordinate. The release passes only if every slot lands within the room R of the range
    check, real and imaginary part: chance at most sqrt(2) R / (|sigma_j(p)| B) per slot. For a
    nonzero integer p the product of |sigma_j(p)| over the slots is at least 1 (it is the square
    root of p's norm, a nonzero integer), so the chance over a chunk of s values is at most
    (sqrt(2) R / B)^(s g / (g + 1)), g copies of each value filling the slots. Requests are
    refused unless that is below 2^-CKKS_LEFTOVER_BITS for the smallest chunk at the largest
    cohort. At the shipped CKKS defaults it is 2^-thousands; a large clip (the room nears the
    masks) or a small last chunk is what let review 8's helper through.
    """
    room = ckks_rooms(params, n_params, params.max_cohort)[0]
    ratio = math.sqrt(2) * room / params.ckks_mask_bound
    if ratio >= 1:
        return 0.0
    slots = params.ckks_poly_modulus // 2
    return min(
        s * (slots // s) / (slots // s + 1) * -math.log2(ratio) for s in ckks_chunk_sizes(params, n_params)
    )


def ckks_noise_free_error(params: ProtectionParams) -> float:
    """Largest error the grid rounding alone adds per coordinate (the CKKS tolerance tests use)."""
    return ckks_grid(params) / 2


def ckks_release_problem(params: ProtectionParams, n_params: int) -> tuple[Reason, str] | None:
    """Why the key holder refuses CKKS requests under these settings before anything opens (reason
    and message), or None."""
    grid, sigma = ckks_grid(params), ckks_noise_std(params, n_params)
    if 0 < sigma < CKKS_MIN_NOISE_STEPS * grid:
        # Noise below a grid step rounds away: with a clip of 1e-7 the release was the exact
        # rounding of the sum, and an offset of half a step read its sign (review 4).
        return (
            Reason.DP_POLICY,
            f"noise of std {sigma:.3g} is under {CKKS_MIN_NOISE_STEPS} steps of the release grid "
            f"{grid:.3g}: raise the clip norm",
        )
    tail = NOISE_TAIL_SIGMAS * ckks_release_std(params, n_params)
    coord_max = params.honest_sum_bounds(n_params, params.max_cohort)[0] + tail
    if coord_max > CKKS_MAX_ROOM:
        # A sum this large could reach the decryption's wrap point inside the honest range,
        # and whether it wrapped would depend on a device's update (review 6).
        return (
            Reason.BAD_REQUEST,
            f"a cohort of {params.max_cohort} may reach {coord_max:.3g} per coordinate, above the "
            f"{CKKS_MAX_ROOM:g} the masks leave room for: lower the clip norm",
        )
    if ckks_leftover_bits(params, n_params) < CKKS_LEFTOVER_BITS:
        # The range check is what refuses a sum in which some device's ciphertext counts other
        # than once (k times, or times any polynomial: review 8's k-fold sum): that device's
        # mask is then left over, and must fall outside the room with near certainty.
        return (
            Reason.BAD_REQUEST,
            f"with masks of bound {params.ckks_mask_bound:.3g} and cohorts up to {params.max_cohort}, "
            f"a sum counting one device twice could pass the range check (needs odds under "
            f"2^-{CKKS_LEFTOVER_BITS}): lower the clip norm, the noise or the cohort bound, or upload "
            "more coordinates",
        )
    return None
