"""The checks a simulation makes before anything starts, without the heavy imports.

`fedchurn simulate` runs them before torch, scikit-learn and Flower load (seconds), so a bad value
is refused at once, naming its option; `simulations.simulate.simulate` runs them too, for callers
of the library.
"""

from __future__ import annotations

from fedchurn.shared.run_config import RunConfig
from fedchurn.simulations.scenario import ScenarioError, load_scenario

__all__ = ["preflight"]


def preflight(cfg: RunConfig) -> None:
    """Every value (option named), the protection plan, the scenario, and for a simulated population
    `--per-round` against its training devices (a log's pool is known only once it is read)."""
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
