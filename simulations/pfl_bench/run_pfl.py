#!/usr/bin/env python3
"""fedchurn's federated workload on Apple's pfl (pfl-research) 0.6, PyTorch backend, in-process.

Usage: python run_pfl.py DATA_DIR OUT_JSON [--workers N] [--threads T]

DATA_DIR holds devices.npz (x, time, event, offsets, input_scale, init_params) and config.json
({"rounds", "per_round": [...], "local_epochs", "batch_size", "lr", "seed"}; optional
"max_examples": keep each device's last rows only, as fedchurn's trainer does). For each per_round
value this runs pfl's own FedAvg simulation: `FederatedAveraging` + `SimulatedBackend` over a
`FederatedDataset` of all devices, a `PyTorchModel` of fedchurn's net (x / input_scale -> Linear
127x16 -> ReLU -> Linear 16x14, parameters W1, b1, W2, b2 as in shared/model_format.py), local
training plain SGD (batch_size, lr, local_epochs; a fresh shuffle of the device's rows every
epoch) on the survival NLL of shared/model.py (mean over the minibatch), central optimiser
SGD lr 1.0 on the unweighted mean of the cohort's deltas. Each central iteration is timed with a
pfl callback; `updates_per_s` leaves out round 1 (warm-up).

--workers N > 1 (default 2, the fastest measured on the 2-core dev machine: ~1,400-1,600
updates/s against ~950-1,050 for one process, per_round 1000, idle machine): pfl's own
multi-worker mode (PFL_WORKER_ADDRESSES / PFL_WORKER_RANK, torch gloo all-reduce), N copies of
this script on this machine, each training its share of every cohort; rank 0 writes OUT_JSON.
--workers 1: everything in this one process. Each process uses `torch.set_num_threads(--threads)`
(default 1; 2 threads in one process was far slower). Multi-worker numbers suffer most when other
work shares the cores; each run's `cpu_share` (rank 0's CPU seconds / wall seconds, rounds 2..R,
~1.0 with the cores to itself, ~0.9 for 2 workers) tells.

Needs only numpy, torch and pfl (it does not import fedchurn).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_RANK_ENV = "PFL_WORKER_RANK"
_ADDR_ENV = "PFL_WORKER_ADDRESSES"
_CHILD_ENV = "FEDCHURN_PFL_BENCH_WORKER"
N_FEATURES, HIDDEN, HORIZON = 127, 16, 14


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_json", type=Path)
    ap.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="pfl worker processes on this machine (default: 2, or 1 on a 1-core machine)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument(
        "--save-params",
        type=Path,
        default=None,
        help="write each run's final flat parameters (W1, b1, W2, b2) to this .npz",
    )
    a = ap.parse_args()
    if a.workers > 1 and os.environ.get(_CHILD_ENV) != "1":
        return _launch_workers(a)
    return _run(a)


def _launch_workers(a: argparse.Namespace) -> int:
    """Start `a.workers` copies of this script as pfl workers on this machine; wait for them."""
    ports = []
    for _ in range(a.workers):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
    t0 = time.perf_counter()
    procs = []
    for rank in range(a.workers):
        env = {**os.environ, _ADDR_ENV: addresses, _RANK_ENV: str(rank), _CHILD_ENV: "1"}
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            str(a.data_dir),
            str(a.out_json),
            "--workers",
            str(a.workers),
            "--threads",
            str(a.threads),
        ]
        if a.save_params is not None:
            cmd += ["--save-params", str(a.save_params)]
        procs.append(subprocess.Popen(cmd, env=env))
    while any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):  # one failed: the rest would wait forever
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"pfl workers exited with {codes}", file=sys.stderr)
        return 1
    out = json.loads(a.out_json.read_text())
    out["launcher_wall_s"] = time.perf_counter() - t0
    a.out_json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _run(a: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    import pfl
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.pytorch import PyTorchTensorDataset
    from pfl.data.sampling import MinimizeReuseUserSampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module
    from pfl.metrics import Metrics, Weighted
    from pfl.model.pytorch import PyTorchModel

    dist = get_default_framework_module().distributed
    rank, world = dist.global_rank, dist.world_size

    cfg = json.loads((a.data_dir / "config.json").read_text())
    with np.load(a.data_dir / "devices.npz") as z:
        data = {k: z[k] for k in z.files}
    offsets = data["offsets"].astype(np.int64)
    n_devices = len(offsets) - 1
    x_all = torch.from_numpy(np.ascontiguousarray(data["x"], dtype=np.float32))
    t_all = torch.from_numpy(np.ascontiguousarray(data["time"], dtype=np.int64))
    e_all = torch.from_numpy(np.ascontiguousarray(data["event"], dtype=bool))
    scale = torch.from_numpy(np.ascontiguousarray(data["input_scale"], dtype=np.float32))
    init = np.ascontiguousarray(data["init_params"], dtype=np.float32)
    if x_all.shape[1] != N_FEATURES or init.shape != (
        HIDDEN * N_FEATURES + HIDDEN + HORIZON * HIDDEN + HORIZON,
    ):
        raise SystemExit(f"unexpected shapes: x {tuple(x_all.shape)}, init_params {init.shape}")
    max_examples = cfg.get("max_examples")
    starts = offsets[:-1].copy()
    if max_examples:
        starts = np.maximum(starts, offsets[1:] - int(max_examples))  # the device's last rows
    rows = offsets[1:] - starts
    E, B, lr = int(cfg["local_epochs"]), int(cfg["batch_size"]), float(cfg["lr"])

    def survival_nll(logits: torch.Tensor, time_: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """shared/model.py's survival_nll: mean over rows of the discrete-time survival NLL."""
        days = torch.arange(1, logits.shape[-1] + 1)
        log_surv = torch.nn.functional.logsigmoid(-logits)
        log_h = torch.nn.functional.logsigmoid(logits)
        t = time_.unsqueeze(-1)
        survived = (days < t) | ((days == t) & ~event.unsqueeze(-1))
        happened = (days == t) & event.unsqueeze(-1)
        return -((log_surv * survived).sum(-1) + (log_h * happened).sum(-1)).mean()

    class ChurnNet(torch.nn.Module):
        """shared/model.py's ChurnNet with the `loss` and `metrics` PyTorchModel asks for."""

        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(N_FEATURES, HIDDEN)
            self.out = torch.nn.Linear(HIDDEN, HORIZON)
            self.register_buffer("scale", scale.clone(), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(x / self.scale)))

        def loss(self, x, time_, event):
            return survival_nll(self(x), time_, event)

        @torch.no_grad()
        def metrics(self, x, time_, event):
            return {"loss": Weighted(float(survival_nll(self(x), time_, event)) * len(x), len(x))}

        def set_flat(self, p: np.ndarray) -> None:
            """W1 (16x127 row-major), b1, W2 (14x16), b2: shared/model_format.unflatten's order."""
            k = 0
            with torch.no_grad():
                for t in (self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias):
                    t.copy_(torch.from_numpy(p[k : k + t.numel()].reshape(t.shape)))
                    k += t.numel()

    class ShuffledDataset(PyTorchTensorDataset):
        """A device's rows; every `iter` (one per local epoch) is a fresh uniform shuffle, cut
        into minibatches of `batch_size` (the last one may be smaller), as in client/training.py.
        (pfl's own Dataset iterates in stored order, the same order every epoch.)"""

        def iter(self, batch_size):
            n = len(self)
            if n == 0:
                return
            perm = torch.randperm(n)
            x, t, e = (v[perm] for v in self.raw_data)
            bs = n if batch_size is None else batch_size
            for lo in range(0, n, bs):
                yield x[lo : lo + bs], t[lo : lo + bs], e[lo : lo + bs]

    def make_user(uid: int) -> ShuffledDataset:
        lo, hi = int(starts[uid]), int(offsets[uid + 1])
        return ShuffledDataset((x_all[lo:hi], t_all[lo:hi], e_all[lo:hi]), user_id=uid)

    class NoLocalEvalFedAvg(FederatedAveraging):
        """pfl's FederatedAveraging without the per-user evaluation pfl forces on central
        iteration 0 (`iteration % evaluation_frequency == 0`): before and after local training
        it would evaluate every trained device (extra forward passes fedchurn does not do) and
        it fails on devices with no rows (pfl raises on an empty evaluation)."""

        def get_next_central_contexts(self, *args, **kwargs):
            contexts, model, metrics = super().get_next_central_contexts(*args, **kwargs)
            if contexts is not None:
                contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
            return contexts, model, metrics

    class RoundTimer(TrainingProcessCallback):
        """Seconds of each central iteration (round 1 from the start of training)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.devices: list[int] = []
            self._t = self._c = 0.0

        def on_train_begin(self, *, model):
            self._t, self._c = time.perf_counter(), time.process_time()
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            now, cpu = time.perf_counter(), time.process_time()
            self.seconds.append(now - self._t)
            self.cpu_seconds.append(cpu - self._c)
            self._t, self._c = now, cpu
            n = [
                v
                for k, v in aggregate_metrics.to_simple_dict().items()
                if k.startswith("Train population | number of devices")
            ]
            self.devices.append(int(n[0]) if n else -1)
            return False, Metrics()

    @torch.no_grad()
    def mean_nll(net: ChurnNet) -> float:
        return float(survival_nll(net(x_all[:200_000]), t_all[:200_000], e_all[:200_000]))

    runs, final_params = [], {}
    for P in [int(p) for p in cfg["per_round"]]:
        R = int(cfg["rounds"])
        seed = int(cfg["seed"])
        # pfl draws its central and per-user seeds from numpy's global generator.
        np.random.seed(seed)
        torch.manual_seed(seed + rank)
        net = ChurnNet()
        net.set_flat(init)
        loss0 = mean_nll(net)
        model = PyTorchModel(
            model=net,
            local_optimizer_create=torch.optim.SGD,
            central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
        )
        # Every device once before any repeats, in a seeded random order: each cohort is P
        # distinct devices (no device twice in a round), identical on every worker.
        order = np.random.default_rng(seed).permutation(n_devices).tolist()
        dataset = FederatedDataset(make_user, MinimizeReuseUserSampler(order))
        backend = SimulatedBackend(training_data=dataset, val_data=None)
        algo_params = NNAlgorithmParams(
            central_num_iterations=R,
            evaluation_frequency=R + 1,
            train_cohort_size=P,
            val_cohort_size=None,
        )
        train_params = NNTrainHyperParams(local_num_epochs=E, local_learning_rate=lr, local_batch_size=B)
        timer = RoundTimer()
        t0 = time.perf_counter()
        NoLocalEvalFedAvg().run(
            algorithm_params=algo_params,
            backend=backend,
            model=model,
            model_train_params=train_params,
            model_eval_params=NNEvalHyperParams(local_batch_size=None),
            callbacks=[timer],
            send_metrics_to_platform=False,
        )
        wall = time.perf_counter() - t0
        s = timer.seconds
        updates = [P] * len(s)
        runs.append(
            {
                "per_round": P,
                "rounds": R,
                "updates_per_s": sum(updates[1:]) / max(sum(s[1:]), 1e-9)
                if len(s) > 1
                else P / max(s[0], 1e-9),
                "updates_per_s_all_rounds": sum(updates) / max(sum(s), 1e-9),
                "first_round_s": s[0],
                "round_seconds": s,
                # This process' CPU seconds per round (rank 0's in multi-worker mode); cpu_share
                # well below 1 over rounds 2..R means the run shared its cores with other work.
                "round_cpu_seconds": timer.cpu_seconds,
                "cpu_share": sum(timer.cpu_seconds[1:]) / max(sum(s[1:]), 1e-9)
                if len(s) > 1
                else timer.cpu_seconds[0] / max(s[0], 1e-9),
                "wall_s": wall,
                "devices_per_round_counted_by_pfl": timer.devices,
                "train_nll_first_200k_rows": {"before": loss0, "after": mean_nll(net)},
            }
        )
        print(
            f"[pfl rank {rank}] per_round={P}: {runs[-1]['updates_per_s']:.0f} updates/s "
            f"(rounds {'2' if R > 1 else '1'}..{R}, cpu share {runs[-1]['cpu_share']:.2f}), "
            f"first round {s[0]:.2f}s, wall {wall:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        final_params[f"per_round_{P}"] = np.concatenate(
            [
                t.detach().numpy().ravel()
                for t in (net.hidden.weight, net.hidden.bias, net.out.weight, net.out.bias)
            ]
        )
        del dataset, backend

    if rank == 0:
        settings = (
            f"pfl FederatedAveraging + SimulatedBackend (SumAggregator, no postprocessors, no DP), "
            f"in-process; {world} pfl worker process{'es' if world > 1 else ''}"
            f"{' (PFL_WORKER_ADDRESSES on this machine, torch gloo all-reduce)' if world > 1 else ''}, "
            f"torch.set_num_threads({a.threads}) each; CPU float32, no AMP, no torch.compile; "
            f"PyTorchModel with local optimiser torch.optim.SGD(lr={lr}), central torch.optim.SGD(lr=1.0); "
            f"per-user evaluation off (do_evaluation=False), metrics not sent to the platform; "
            f"user sampler MinimizeReuseUserSampler over a seeded permutation of all {n_devices} devices "
            f"(P distinct devices per cohort); each local epoch a fresh torch.randperm shuffle; "
            f"every update weighted 1 (unweighted mean, devices with 0 rows included, delta 0)"
        )
        out = {
            "pfl_version": pfl.__version__,
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "python": sys.version.split()[0],
            "settings": settings,
            "workers": world,
            "torch_threads": a.threads,
            "devices": n_devices,
            "rows": int(rows.sum()),
            "config": cfg,
            "runs": runs,
            "script_wall_s": time.perf_counter() - t_start,
        }
        a.out_json.parent.mkdir(parents=True, exist_ok=True)
        a.out_json.write_text(json.dumps(out, indent=1) + "\n")
        if a.save_params is not None:
            np.savez(a.save_params, **final_params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
