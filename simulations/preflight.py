"""The checks a simulation makes before anything starts, without the heavy imports.

`fedchurn simulate` runs them before torch, scikit-learn and Flower load (seconds), so a bad value
is refused at once, naming its option; `simulations.simulate.simulate` runs them too, for callers
of the library.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.scenario import ScenarioError, load_scenario

__all__ = ["PREVIOUS_RUN", "check_out_folder", "preflight"]

# What a run writes into its folder and reads back as its result. A run into a folder that holds an
# earlier run's starts by removing them, so that a run that fails cannot be read as a success with
# the earlier run's model and figures (review 19: a failed run exited 0 with the previous results).
PREVIOUS_RUN = (
    "rounds.jsonl",
    "federated.json",
    "progress.json",
    "metrics.json",
    "central_net_params.npy",
    "model",
    "checkpoints",
)


def preflight(cfg: RunConfig, out: Path | None = None) -> None:
    """Every value (option named), the protection plan, the scenario, for a simulated population
    `--per-round` against its training devices (a log's pool is known only once it is read), and
    the results folder `out` (`check_out_folder`)."""
    if out is not None:
        check_out_folder(out)
    cfg.check()
    cfg.train_protection()  # settings no upload could meet
    cfg.check_ckks()  # settings the CKKS key holder refuses
    if cfg.events_file:
        return
    try:
        scenario = load_scenario(cfg.scenario)
    except ScenarioError as e:
        raise ValueError(f"--scenario: {e}") from None
    try:
        scenario.with_days(cfg.days)
    except ScenarioError as e:
        raise ValueError(f"--days: {e}") from None
    cfg.check_pool(cfg.devices)
    if cfg.dp and cfg.scheme.homomorphic:
        # The noise decides the CKKS key holder's ranges; it costs the accountant's import (~1 s).
        from fedchurn.server.dp import run_noise_multiplier

        cfg.check_ckks(run_noise_multiplier(cfg, cfg.training_pool(cfg.devices)))


def _is_run_folder(out: Path) -> bool:
    """Whether `out` holds an earlier run: its `config.json`, as `simulate` writes it."""
    try:
        doc = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"run", "model"} <= set(doc)


def check_out_folder(out: Path) -> None:
    """Refuse, before anything is written, an `--out` folder that holds files a run would replace
    but no earlier run (they are the user's own: review 21 lost a `model/notes.txt`), or where a
    run must create a folder of its own (`private`, `devices`, `flower`) and finds a file."""
    if not out.is_dir():
        return
    for name in ("private", "devices", "flower", "model", "checkpoints"):
        if (out / name).exists() and not (out / name).is_dir():
            raise ValueError(f"--out {out}: {out / name} is a file where a run writes a folder")
    found = [name for name in PREVIOUS_RUN if os.path.lexists(out / name)]
    if found and not _is_run_folder(out):
        raise ValueError(
            f"--out {out} holds {', '.join(found)} but no earlier run (no config.json of one): a run "
            "would replace them; choose another folder"
        )
