"""A device's own configuration: what its provisioner set, never what the aggregator says.

On a deployed SuperNode this is Flower's node configuration (`flower-supernode --node-config`,
written by `fedchurn deploy`). Flower's simulation engine gives its simulated nodes no node
configuration of their own (only `partition-id`), so a simulation provisions its devices through
a TOML file named by `$FEDCHURN_DEVICE_CONFIG` (written by the runner, read on the device side);
keys present in both must agree. The key holder's identity (`shared.keyholder_pin`) is read from
here and only from here, and so is the device's upload budget (`max-uploads`): the aggregator
decides neither. Nor the reply floor (`reply-after`), which keeps how long the node takes
from saying how much data its devices hold, nor the least noise any of its uploads may be released
with (`min-noise`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from fedchurn.shared.keyholder_pin import CKKS_PIN_KEY, KeyHolderPin, KeyHolderPublic, PinError

__all__ = [
    "MAX_LOCAL_STEPS_KEY",
    "MAX_UPLOADS_KEY",
    "MIN_NOISE_KEY",
    "PROVISIONING_ENV",
    "REPLY_AFTER_KEY",
    "REPLY_AFTER_PER_DEVICE_KEY",
    "device_settings",
    "local_steps_cap",
    "noise_floor",
    "pinned_keyholder",
    "reply_floor",
    "reply_floor_per_device",
    "trusted_keyholder",
    "upload_budget",
]

PROVISIONING_ENV = "FEDCHURN_DEVICE_CONFIG"
MAX_UPLOADS_KEY = "max-uploads"
MAX_LOCAL_STEPS_KEY = "max-local-steps"
MIN_NOISE_KEY = "min-noise"
MAX_MIN_NOISE = 100.0  # far above any useful multiplier; a larger pin is a typo
REPLY_AFTER_KEY = "reply-after"
REPLY_AFTER_PER_DEVICE_KEY = "reply-after-per-device"
MAX_REPLY_AFTER = 3600.0  # seconds; a round waits for replies for at most its own timeout anyway


@lru_cache(maxsize=4)
def _provisioning(path: str) -> dict[str, object]:
    try:
        with Path(path).open("rb") as f:
            return dict(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PinError(f"${PROVISIONING_ENV} names {path}, which cannot be read as TOML: {e}") from None


def device_settings(node_config: Mapping[str, object]) -> tuple[dict[str, object], str]:
    """The device's settings and where they come from (for error messages)."""
    path = os.environ.get(PROVISIONING_ENV, "")
    if not path:
        return dict(node_config), "the node configuration"
    file = _provisioning(path)
    for key, value in node_config.items():
        if key in file and file[key] != value:
            raise PinError(f"{key!r} differs between the node configuration and {path}")
    return {**file, **node_config}, f"the node configuration or {path}"


def pinned_keyholder(node_config: Mapping[str, object]) -> KeyHolderPin:
    settings, where = device_settings(node_config)
    return KeyHolderPin.from_node_config(settings, where)


def trusted_keyholder(
    node_config: Mapping[str, object], offered_key: bytes | None, ckks: bool, offered_context: bytes | None
) -> KeyHolderPublic:
    """What this device protects its uploads with: its pinned key holder, checked against what the
    aggregator's message names (a different key, or a CKKS context whose hash is not pinned, is
    refused with `UntrustedKeyHolderError` before any work)."""
    pin = pinned_keyholder(node_config)
    if ckks and pin.ckks_context_sha256 is None:
        raise PinError(f"a CKKS run needs {CKKS_PIN_KEY!r} pinned in the device's configuration")
    return pin.trusted(offered_key, ckks, offered_context)


def _whole_setting(node_config: Mapping[str, object], key: str) -> int | None:
    """A whole-number setting of at least 1 (None when not set), refused naming key and where."""
    settings, where = device_settings(node_config)
    raw = settings.get(key)
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    if isinstance(raw, bool) or not text.isdigit() or int(text) < 1:
        raise PinError(f"{key!r} in {where} must be a whole number of at least 1, got {raw!r}")
    return int(text)


def upload_budget(node_config: Mapping[str, object]) -> int | None:
    """The most uploads any one device of this node makes over the life of its ledger (None: no
    cap). A sum over k devices hides a device in one round, not across rounds the aggregator may
    repeat; with the key holder's noise floor z, N uploads bound what the aggregator can learn to
    the epsilon of N Gaussian releases (`server.dp.epsilon_without_sampling(z, delta, N, "poisson")`),
    whatever rounds it runs (docs/privacy.md)."""
    return _whole_setting(node_config, MAX_UPLOADS_KEY)


def local_steps_cap(node_config: Mapping[str, object]) -> int | None:
    """The most local SGD steps (epochs x minibatches of the largest device) a training task may
    ask of this node (None: no cap). The aggregator picks the epochs and the batch size; work
    without a bound outlasts any reply floor, and its time shows how many rows a device holds."""
    return _whole_setting(node_config, MAX_LOCAL_STEPS_KEY)


def reply_floor_per_device(node_config: Mapping[str, object]) -> float:
    """Seconds added to the reply floor per device a task lists (0.0: not set): a node serving
    many stores works in proportion to them, past any fixed floor."""
    return _seconds_setting(node_config, REPLY_AFTER_PER_DEVICE_KEY)


def reply_floor(node_config: Mapping[str, object]) -> float:
    """Seconds this node waits, from a task's arrival, before it answers (0.0: not set).

    How long a device takes grows with its labelled rows, and the aggregator, which picks the
    epochs and the batch size, times the reply (with 150 epochs of batch 1 a helper read row counts
    from latency, correlation 0.95: docs/privacy.md). A node that answers no earlier than a fixed
    floor, set by its provisioner above its longest work, answers in the same time whatever its
    devices hold."""
    return _seconds_setting(node_config, REPLY_AFTER_KEY)


def _seconds_setting(node_config: Mapping[str, object], key: str) -> float:
    """A number of seconds from 0 to MAX_REPLY_AFTER (0.0 when not set)."""
    return _number_setting(node_config, key, MAX_REPLY_AFTER, "a number of seconds")


def _number_setting(node_config: Mapping[str, object], key: str, most: float, what: str) -> float:
    """A number from 0 to `most` (0.0 when not set), refused naming key and where."""
    settings, where = device_settings(node_config)
    raw = settings.get(key)
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(str(raw)) if not isinstance(raw, bool) else float("nan")
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= most:  # also refuses nan
        raise PinError(f"{key!r} in {where} must be {what} from 0 to {most:g}, got {raw!r}")
    return value


def noise_floor(node_config: Mapping[str, object]) -> float:
    """The least noise multiplier this node's devices let any upload of theirs be released with
    (0.0: not set): a training or feature-mean round's DP noise, an evaluation's `eval-noise`.

    A sum over k devices does not hide a device from a model crafted so that the others' uploads
    are predictable (docs/privacy.md, review 15); only the key holder's noise bounds that, and the
    key holder's own floor exempts exact evaluations and is its operator's choice. A device that
    pins a floor answers no task whose parameters, bound into its seal and honoured by the key
    holder it pins, carry less."""
    return _number_setting(node_config, MIN_NOISE_KEY, MAX_MIN_NOISE, "a noise multiplier")
