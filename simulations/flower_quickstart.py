"""Flower's quickstart FedAvg on fedchurn's model and devices: the benchmark's reference point.

The apps follow Flower's quickstart-pytorch: the ServerApp hands Flower's own
`flwr.serverapp.strategy.FedAvg` a torch state dict and calls `strategy.start`; the ClientApp
loads the ArrayRecord into the net, trains it with its own torch loop (`model.train()`, an SGD
optimiser, minibatches), and replies with an ArrayRecord and a MetricRecord("num-examples"). What
is fedchurn's is only what must be identical for a fair comparison: the net (`ChurnNet`) and its
loss, its initial weights, the local hyper-parameters and the device data (the same generated
devices as fedchurn's simulation, through the device's own preparation code).

As in quickstart-pytorch, one SuperNode is one device: the federation has `per_round` SuperNodes
and each round every node plays one device of the training pool, drawn from the run's seed.
Flower's FedAvg then samples every node (`fraction_train = 1`). No federated evaluation (fedchurn's
bench runs have none per round).

The ServerApp writes `quickstart.json` in `out-dir`: `flwr run` exits 0 even when a ServerApp
fails, so the caller checks `status` there.
"""

from __future__ import annotations

import json
import random
import time
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedchurn.client.device_data import prepare_device
from fedchurn.client.flower_app import device_seed
from fedchurn.server.settings import AggregatorSettings
from fedchurn.shared.model import ChurnNet, survival_nll
from fedchurn.shared.model_format import init_params
from fedchurn.shared.run_config import RunConfig, is_eval_device
from fedchurn.simulations.population import generate_device
from fedchurn.simulations.scenario import load_scenario

STATUS_FILE = "quickstart.json"
PARAMS_FILE = "quickstart_params.npy"
MetricValue = int | float | list[int] | list[float]
COMPONENTS = (
    "fedchurn.simulations.flower_quickstart:server_app",
    "fedchurn.simulations.flower_quickstart:client_app",
)


@lru_cache(maxsize=4)
def _train_pool(seed: int, devices: int, eval_fraction: float) -> tuple[int, ...]:
    return tuple(d for d in range(devices) if not is_eval_device(seed, d, eval_fraction))


def device_for(cfg: RunConfig, server_round: int, slot: int, slots: int) -> int:
    """The device a node plays in a round: fedchurn's slots draw, replayed on the node."""
    pool = _train_pool(cfg.seed, cfg.devices, cfg.eval_fraction)
    rng = random.Random(cfg.seed)
    k = min(cfg.per_round, slots, len(pool))
    drawn: list[int] = []
    for _ in range(server_round):
        drawn = rng.sample(pool, k)
    return drawn[slot]


def _train(model: ChurnNet, x: np.ndarray, t: np.ndarray, e: np.ndarray, cfg: RunConfig, seed: int) -> float:
    """quickstart-pytorch's `train`: the model's own parameters, torch's SGD, minibatches."""
    if len(x) == 0:
        return 0.0
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    xs, ts, es = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(e)
    total = 0.0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(len(x))
        total = 0.0
        for k in range(0, len(x), cfg.batch_size):
            idx = order[k : k + cfg.batch_size]
            opt.zero_grad()
            loss = survival_nll(model(xs[idx]), ts[idx], es[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
    return total / len(x)


# --- ClientApp (quickstart-pytorch's shape) ---

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
    slot = int(context.node_config["partition-id"])
    index = device_for(cfg, server_round, slot, int(context.node_config["num-partitions"]))
    dev = generate_device(cfg.seed, index, load_scenario(cfg.scenario), cfg.days)
    data = prepare_device(
        dev.events,
        int(dev.truth["start_day"]),
        int(dev.truth["today"]),
        cfg.protocol(),
    )
    x, t, e = data.training_rows()
    x, t, e = x[-120:], t[-120:], e[-120:]  # the device's most recent days, as fedchurn's devices
    model = ChurnNet()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    loss = _train(model, x, t, e, cfg, device_seed(cfg, index, server_round))
    metrics: dict[str, MetricValue] = {"train_loss": loss, "num-examples": len(x)}
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


# --- ServerApp (quickstart-pytorch's shape, plus a status file and round times) ---

server_app = ServerApp()


def _count_replies(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's own metric averaging, plus how many replies were aggregated."""
    out = aggregate_metricrecords(records, weighting_key)
    out["replies"] = len(records)
    return out


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    out = Path(AggregatorSettings.from_env().out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _write(out, {"status": "running"})
    model = ChurnNet()
    model.set_vector(init_params(cfg.seed))  # the initial model fedchurn's ServerApp starts from
    nodes = len(list(grid.get_node_ids()))
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        train_metrics_aggr_fn=_count_replies,
    )
    ends: list[float] = []

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        ends.append(time.time())  # round 0: just before the first round starts
        return None

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.num_server_rounds,
        train_config=ConfigRecord({"lr": cfg.lr}),
        evaluate_fn=after_round,
    )
    replies = [_int(m.get("replies", 0)) for m in result.train_metrics_clientapp.values()]
    doc: dict[str, Any] = {
        "supernodes": nodes,
        "round_seconds": [b - a for a, b in pairwise(ends)],
        "replies": replies,
        "wall_seconds": time.time() - t0,
    }
    if result.arrays is None:
        _write(out, {**doc, "status": "failed", "reason": "no round produced a model"})
        return
    model.load_state_dict(result.arrays.to_torch_state_dict())
    np.save(out / PARAMS_FILE, model.get_vector())
    _write(out, {**doc, "status": "finished"})


def _int(value: MetricValue) -> int:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return int(value)


def _write(out: Path, doc: dict[str, Any]) -> None:
    tmp = out / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out / STATUS_FILE)
