"""Local training on the device: a few epochs of plain SGD over the device's own labelled days.

One trainer, `train_devices`, trains a batch of devices together; a phone runs the same code with
a batch of one (`local_train`). Only the resulting parameter delta leaves this module (and then
only protected).

Semantics (what a port follows; float32 arithmetic unless said otherwise):

1. Rows. A device keeps its last `max_examples` labelled rows (the most recent days): n =
   min(rows, max_examples), the examples it reports. A device with n = 0 returns the global
   parameters, 0 examples and a nan loss.
2. Order. One generator per device for the whole training, `numpy.random.default_rng(seed)`.
   For each epoch e = 0..epochs-1: `order = rng.permutation(n)`; the epoch's minibatches are
   order[0:B], order[B:2B], ... (B = `batch_size`; the last one may be smaller). (A port matches a
   simulation bit for bit only with NumPy's generator: PCG64 seeded through SeedSequence, and
   `Generator.permutation`'s shuffle; any uniform shuffle trains the same way in distribution.)
3. Step. Each minibatch is one plain SGD step, θ ← θ − lr · ∇L, where L is the mean over its rows
   of `shared.model.survival_nll_rows` (discrete-time survival NLL of the 14 hazard logits) of the
   network of `shared.model` (`ChurnNet`) / `shared.model_format`:
       u = x / INPUT_SCALE;  a = W1 u + b1;  h = relu(a);  z = W2 h + b2   (z[j]: days j = 1..14)
   θ is the flat vector W1 (16×127), b1, W2 (14×16), b2, row-major. With w = 1 / (rows in the
   minibatch) and (t, event) a row's label, ∇L is the sum over the minibatch's rows of
       g_z[j] = w · (sigmoid(z[j]) · [j ≤ t] − [j = t and event])
       ∇b2 = g_z;  ∇W2 = g_z hᵀ;  g_a = (W2ᵀ g_z) · [a > 0];  ∇b1 = g_a;  ∇W1 = g_a uᵀ
   which is what torch's autograd gives for `survival_nll` through `ChurnNet` (ReLU's gradient is
   0 at a = 0); a test checks it against autograd and `torch.optim.SGD`.
4. Loss. The reported loss is the mean over the n rows of each row's NLL in the last epoch, taken
   with the parameters before the step that uses the row (float64; nan when n = 0 or epochs = 0).
   It is a local diagnostic: the federated round never sends or uses it, so the ClientApp asks
   for none (`with_loss=False`: loss nan, the parameters unchanged) and saves the NLL's
   log-sigmoids, ~19 % of a one-step round's training.

Batching. Devices of one batch have different n, so different numbers of steps per epoch. They
run in lockstep, epoch by epoch and minibatch index by minibatch index (epochs × the largest
ceil(n / B) steps), each device with weight 0 on the rows it does not have: a device without a
minibatch at a step gets a zero gradient, and that step leaves it unchanged. The work is sliced
to the devices that still have a minibatch (devices sorted by their number of minibatches) and to
the widest minibatch among them, and a batch trains in chunks of `_CHUNK` devices. Nothing one
device computes mixes with another's, so its result does not depend on the other devices of the
batch (up to float32 summation order in the matrix products, ~1e-7).

Implementation: torch, float32, CPU, per-device weight tensors of shape (D, ...) and batched
matrix products (`baddbmm`/`bmm`), with the backward pass of step 3 written out rather than taken
from autograd. Measured in one process on this 2-core machine, one torch thread, 1,000 real
devices (~74 rows each), 2 epochs, batch 32, the whole `train_devices`: ~8,400 devices/s with the
written-out backward, ~5,900 with autograd through the same batched products (which also
differentiates the loss' masks and log-sigmoids), ~5,500 with `torch.func.vmap(grad(...))`. The
written-out backward is also what a port without autograd writes. Of the ~120 ms for 1,000
devices, about a third is per-device Python work a batch cannot share (each device's own
generator: `default_rng` ~10 µs, two permutations ~8 µs; copying its scaled rows ~5 µs); the rest
is the steps, mostly gathering each minibatch's rows and the two 127-wide matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedchurn.shared.model import survival_nll_rows
from fedchurn.shared.model_format import DEFAULT_SPEC, ModelSpec, unflatten

# Devices trained together at a time: small enough for a chunk's minibatch rows (256 × 32 × 127
# floats, 4 MB) to stay near the cache; measured fastest of 64..1,000 (all at once: ~20 % slower).
_CHUNK = 256


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    max_examples: int = 120  # most recent labelled days used per device and round
    optimizer: str = "sgd"  # sgd keeps gradient scale, so averaging updates ~ large-batch SGD


@dataclass(frozen=True)
class LocalResult:
    params: np.ndarray
    n_examples: int
    loss: float


@dataclass(frozen=True)
class DeviceRows:
    """One device's labelled training rows, oldest first: features (n, F) float32, the label's
    time (n,) int64 and event (n,) bool. n may be 0."""

    x: np.ndarray
    time: np.ndarray
    event: np.ndarray


@dataclass(frozen=True)
class BatchResult:
    """Per device of the batch, in its order: new parameters (D, P) float32, examples used (D,)
    int64, mean training loss of the last epoch (D,) float64 (nan for a device with no rows)."""

    params: np.ndarray
    n_examples: np.ndarray
    loss: np.ndarray


def local_train(
    params: np.ndarray,
    features: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    spec: ModelSpec = DEFAULT_SPEC,
) -> LocalResult:
    """Train one device from `params` on its (features, time, event) rows: `train_devices` with a
    batch of one."""
    res = train_devices(params, [DeviceRows(x=features, time=time, event=event)], cfg, [seed], spec)
    return LocalResult(params=res.params[0], n_examples=int(res.n_examples[0]), loss=float(res.loss[0]))


def train_devices(
    global_params: np.ndarray,
    devices: Sequence[DeviceRows],
    cfg: TrainConfig,
    seeds: Sequence[int],
    spec: ModelSpec = DEFAULT_SPEC,
    with_loss: bool = True,
) -> BatchResult:
    """Train every device of the batch from `global_params`, device i with generator seed
    `seeds[i]`; each device's result is what it computes alone (see the module docstring).
    `with_loss=False` skips the last epoch's loss (reported as nan); the parameters are the same."""
    check_train_config(cfg)
    p0 = np.asarray(global_params, dtype=np.float32)
    if p0.shape != (spec.n_params,):
        raise ValueError(f"expected {spec.n_params} global parameters, got shape {p0.shape}")
    if len(seeds) != len(devices):
        raise ValueError(f"{len(devices)} devices but {len(seeds)} seeds")
    rows = [_recent(dev, cfg.max_examples, spec) for dev in devices]
    n = np.array([len(r.time) for r in rows], dtype=np.int64)
    params = np.tile(p0, (len(rows), 1))
    loss = np.full(len(rows), np.nan)
    steps = -(-n // cfg.batch_size)  # minibatches per epoch
    trained = np.argsort(-steps, kind="stable")[: int(np.count_nonzero(steps)) if cfg.epochs else 0]
    for lo in range(0, len(trained), _CHUNK):
        chunk = trained[lo : lo + _CHUNK]
        params[chunk], loss[chunk] = _train_chunk(
            p0, [rows[i] for i in chunk], [int(seeds[i]) for i in chunk], cfg, spec, with_loss
        )
    return BatchResult(params=params, n_examples=n, loss=loss)


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse a configuration the trainer cannot run, naming what is wrong."""
    if cfg.optimizer == "adam":
        raise ValueError("optimizer 'adam' is not supported: the device trainer runs plain SGD only")
    if cfg.optimizer != "sgd":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: the device trainer runs 'sgd'")
    if cfg.epochs < 0 or cfg.batch_size < 1 or cfg.max_examples < 1 or not math.isfinite(cfg.lr):
        raise ValueError(f"invalid training configuration {cfg}")


def _recent(dev: DeviceRows, max_examples: int, spec: ModelSpec) -> DeviceRows:
    """The device's last `max_examples` rows, checked and in the trainer's dtypes."""
    x = np.asarray(dev.x, dtype=np.float32)
    time = np.asarray(dev.time, dtype=np.int64)
    event = np.asarray(dev.event, dtype=bool)
    n = len(time) if time.ndim == 1 else -1
    if x.shape != (n, spec.n_features) or event.shape != (n,) or time.shape != (n,):
        raise ValueError(
            f"a device's rows must be x (n, {spec.n_features}), time (n,), event (n,); "
            f"got {x.shape}, {time.shape}, {event.shape}"
        )
    k = max(n - max_examples, 0)
    return DeviceRows(x=x[k:], time=time[k:], event=event[k:])


def _train_chunk(
    p0: np.ndarray,
    rows: list[DeviceRows],
    seeds: list[int],
    cfg: TrainConfig,
    spec: ModelSpec,
    with_loss: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Devices with at least one row, sorted by minibatches per epoch (most first): their new
    parameters (D, P) and last-epoch losses (D,; nan without `with_loss`)."""
    D, B, E = len(rows), cfg.batch_size, cfg.epochs
    F, H = spec.n_features, spec.outputs
    nl = [len(r.time) for r in rows]
    n = np.array(nl, dtype=np.int64)
    R = int(n.sum())  # rows of the batch; row R of each table is the padding row
    start = np.zeros(D, dtype=np.int64)
    np.cumsum(n[:-1], out=start[1:])
    x_tab = torch.empty(R + 1, F)  # u = x / INPUT_SCALE, every row of the batch
    u = x_tab.numpy()
    u[R] = 0.0
    perms: list[np.ndarray] = []
    for d, r in enumerate(rows):
        np.divide(r.x, spec.input_scale, out=u[start[d] : start[d] + nl[d]])
        rng = np.random.default_rng(seeds[d])
        perms.extend(rng.permutation(nl[d]) for _ in range(E))
    t_np = np.zeros(R + 1, dtype=np.int64)
    e_np = np.zeros(R + 1, dtype=bool)
    np.concatenate([r.time for r in rows], out=t_np[:R])
    np.concatenate([r.event for r in rows], out=e_np[:R])
    t_tab, e_tab = torch.from_numpy(t_np), torch.from_numpy(e_np)
    te_tab = torch.where(e_tab, t_tab, 0)  # the event day, 0 when censored

    # The schedule: idx[e, j, d, :] are the table rows of device d's minibatch j in epoch e.
    s = -(-n // B)
    smax = int(s[0])
    width = min(B, int(n.max()))  # no minibatch has more rows than its device
    idx = np.full((E, smax, D, width), R, dtype=np.int64)
    dev = np.repeat(np.arange(D), E * n)
    q = np.arange(E * R) - np.repeat(E * start, E * n)  # position in the device's own sequence
    epoch, p = np.divmod(q, n[dev])
    block, slot = np.divmod(p, B)
    idx[epoch, block, dev, slot] = start[dev] + np.concatenate(perms)
    valid = idx != R
    count = valid.sum(axis=3)  # rows of each minibatch, (E, smax, D)
    weight = torch.from_numpy(  # w: 1 / rows of the minibatch, 0 on padding
        np.where(valid, 1.0 / np.maximum(count, 1)[..., None], 0.0).astype(np.float32)
    )
    active = (s[None, :] > np.arange(smax)[:, None]).sum(axis=1)  # devices with a minibatch j
    idx_t = torch.from_numpy(idx)

    # Per-device weights, the first layer's kept transposed (D, F, Hd) for the batched products.
    w1, b1, w2, b2 = (torch.from_numpy(a) for a in unflatten(p0, spec))
    W1 = w1.T.repeat(D, 1, 1)  # repeat copies: the caller's global parameters stay untouched
    B1 = b1.repeat(D, 1)
    W2 = w2.T.repeat(D, 1, 1)
    B2 = b2.repeat(D, 1)
    days = torch.arange(1, H + 1)
    x_buf = torch.empty(D * width, F)
    loss_sum = torch.zeros(D, dtype=torch.float64)
    lr = float(cfg.lr)
    with torch.no_grad():
        for e in range(E):
            for j in range(smax):
                m = int(active[j])
                bk = int(count[e, j, :m].max())
                flat = idx_t[e, j, :m, :bk].reshape(-1)
                w = weight[e, j, :m, :bk]
                X = torch.index_select(x_tab, 0, flat, out=x_buf[: m * bk]).view(m, bk, F)  # u
                t = t_tab.index_select(0, flat).view(m, bk)
                a = torch.baddbmm(B1[:m, None, :], X, W1[:m])
                h = torch.relu(a)
                z = torch.baddbmm(B2[:m, None, :], h, W2[:m])
                if with_loss and e == E - 1:
                    nll = survival_nll_rows(z, t, e_tab.index_select(0, flat).view(m, bk))
                    loss_sum[:m] += nll.mul_(w > 0).sum(1)
                # g_z = w (sigmoid(z) [j <= t] - [j = t and event]); g_a = (W2ᵀ g_z) [a > 0]
                te = te_tab.index_select(0, flat).view(m, bk, 1)
                gz = torch.sigmoid(z).mul_(days <= t[..., None])
                gz = gz.sub_((days == te).to(gz.dtype)).mul_(w[..., None])
                ga = torch.bmm(gz, W2[:m].transpose(1, 2)).mul_(a > 0)
                # θ -= lr ∇θ, the gradients summed over each device's rows by the products
                W2[:m].baddbmm_(h.transpose(1, 2), gz, alpha=-lr)
                B2[:m].add_(gz.sum(1), alpha=-lr)
                W1[:m].baddbmm_(X.transpose(1, 2), ga, alpha=-lr)
                B1[:m].add_(ga.sum(1), alpha=-lr)
    out = torch.cat([W1.transpose(1, 2).reshape(D, -1), B1, W2.transpose(1, 2).reshape(D, -1), B2], dim=1)
    return out.numpy(), loss_sum.numpy() / n if with_loss else np.full(D, np.nan)
