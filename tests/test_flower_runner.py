"""What `flwr run` is told about the simulation engine (`simulations.flower_runner`)."""

from __future__ import annotations

import pytest

from fedchurn.simulations.flower_runner import engine_config


def _parse(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split())}


@pytest.mark.parametrize(
    ("nodes", "cores", "engine_cpus"),
    [(1, 2, 1), (3, 8, 3), (2, 2, None), (4, 2, None), (300, 2, None)],
)
def test_the_engine_starts_no_more_actors_than_nodes(nodes: int, cores: int, engine_cpus: int | None) -> None:
    """Ray starts one ClientApp actor per CPU it is given (one CPU per node): with fewer nodes than
    cores the engine is given one CPU per node; otherwise Ray counts the machine's own."""
    cfg = _parse(engine_config(nodes, cores=cores))
    assert cfg["num-supernodes"] == nodes and cfg["client-resources-num-cpus"] == 1
    assert cfg.get("init-args-num-cpus") == engine_cpus
