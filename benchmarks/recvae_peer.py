"""RecVAE against the authors' code (``ilya-shenbin/RecVAE``): seconds per epoch and validation
NDCG@100 after the same number of epochs, on the same matrices, in one run, on CPU.

The authors' ``model.py`` is imported at run time from ``--peer-dir`` (it is never copied into
this repository) and driven by a loop that mirrors their ``run.py``: users shuffled with NumPy,
dense float32 batches of 500 (``torch.Tensor(rows.toarray())``), one Adam per half (lr 5e-4),
3 encoder epochs with dropout 0.5, ``update_prior()``, 1 decoder epoch without dropout,
``gamma=0.005``, seed 1337. recvae trains ``RecVAE()`` with its defaults (the same settings).
First, both models get the authors' initial weights and the same noise on one batch: the loss
and gradients must agree to float rounding (``same_model_check``).
Both are scored by the same code (``recvae.evaluation``, validation NDCG@100 with the fold-in
masked) after every epoch, and the two trainings alternate epoch by epoch, so that both see the
same machine load: recvae continues from its checkpoint (``fit(..., resume=True)``, exact) for
one more epoch, then the peer trains one epoch. Seconds per epoch exclude validation for both.

Data (each split like the paper: strong generalization, 20 % of each held-out user's items as
targets):
- ``ml-latest-small``: the bundled zip, ratings > 3.5, 60 + 60 held-out users;
- ``citeulike-a``: ``users.dat`` from ``--shared-data``, 500 + 500 held-out users;
- ``ml20m-like``: ML-20M's shape scaled by ``--scale`` (default 0.1: ~13,700 users × 20,108
  items, ~0.94M interactions, power-law users and items), 10 % of ML-20M's held-out users; 3
  epochs by default: its items are drawn independently of the users, so its NDCG measures
  little beyond popularity, and the point is the speed at ML-20M's item count;
- ``gowalla`` (not in the default list: ~3 minutes per peer epoch on 2 cores): the LightGCN
  release's train.txt + test.txt from ``--shared-data``, 3,000 + 3,000 held-out users.

Get the peer code (outside this repository), then run::

    git clone https://github.com/ilya-shenbin/RecVAE /work/peers/RecVAE
    python benchmarks/recvae_peer.py --peer-dir /work/peers/RecVAE --shared-data /work/shared/data \\
        --json benchmarks/results/recvae_peer.json
    python benchmarks/recvae_peer.py --datasets ml-latest-small --epochs 3   # a quick check
    python benchmarks/recvae_peer.py --datasets citeulike-a:20,gowalla:2      # name:epochs
    python benchmarks/recvae_peer.py --datasets ml-latest-small:10 --seeds 1,2,3,4,5  # the spread
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recvae.data.dataset import Dataset
from recvae.data.preprocess import preprocess
from recvae.data.split import strong_generalization
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.autoencoders import RecVAE

sys.path.insert(0, str(Path(__file__).parent))
from _common import power_law_rows, write_json  # noqa: E402  (synthetic rows, JSON output)

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("ml-latest-small", "citeulike-a", "ml20m-like", "gowalla")
ML20M_USERS, ML20M_ITEMS, ML20M_NNZ, ML20M_HELDOUT = 136_677, 20_108, 9_990_682, 10_000
PEER_SEED = 1337  # run.py's


# --------------------------------------------------------------------------- data


def load_dataset(name: str, shared: Path, scale: float) -> Dataset:
    """One of :data:`DATASETS` with a strong-generalization split."""
    from recvae.data.sources import read_citeulike, read_lightgcn, read_movielens

    if name == "ml-latest-small":
        df = preprocess(read_movielens(REPO / "data" / "ml-latest-small.zip"), threshold=3.5)
        return strong_generalization(df, 60)
    if name == "citeulike-a":
        df = preprocess(read_citeulike(shared / "citeulike-a" / "users.dat"), threshold=None)
        return strong_generalization(df, 500)
    if name == "gowalla":
        raw = read_lightgcn(shared / "gowalla").drop(columns="part")
        return strong_generalization(preprocess(raw, threshold=None), 3000)
    if name == "ml20m-like":
        rng = np.random.default_rng(0)
        n_users = int(ML20M_USERS * scale)
        coo = power_law_rows(n_users, ML20M_ITEMS, int(ML20M_NNZ * scale), rng).tocoo()
        df = pd.DataFrame({"user": coo.row, "item": coo.col, "value": coo.data})
        return strong_generalization(df, max(1, int(ML20M_HELDOUT * scale)))
    raise SystemExit(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")


# --------------------------------------------------------------------------- the peer


def import_peer(peer_dir: Path) -> ModuleType:
    """The authors' ``model.py`` from ``peer_dir``, or exit saying how to get it."""
    path = peer_dir / "model.py"
    if not path.is_file():
        raise SystemExit(
            f"{path}: not found. Put the authors' RecVAE code outside this repository, e.g.\n"
            f"    git clone https://github.com/ilya-shenbin/RecVAE {peer_dir}\n"
            "and pass its folder with --peer-dir."
        )
    spec = importlib.util.spec_from_file_location("recvae_peer_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PeerTrainer:
    """The authors' training, as their ``run.py`` drives it, on CPU, one epoch per call."""

    def __init__(
        self, peer: ModuleType, train: sp.csr_matrix, *, gamma: float = 0.005,
        seed: int = PEER_SEED,
    ) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.train = train.astype(np.float32)
        self.gamma = gamma
        self.model = peer.VAE(hidden_dim=600, latent_dim=200, input_dim=train.shape[1])
        self.opt_encoder = torch.optim.Adam(set(self.model.encoder.parameters()), lr=5e-4)
        self.opt_decoder = torch.optim.Adam(set(self.model.decoder.parameters()), lr=5e-4)

    def _run(self, opts: list[torch.optim.Optimizer], n_epochs: int, dropout_rate: float) -> None:
        self.model.train()
        n = self.train.shape[0]
        for _ in range(n_epochs):
            idx = np.arange(n)
            np.random.shuffle(idx)
            for start in range(0, n, 500):
                ratings = torch.Tensor(self.train[idx[start : start + 500]].toarray())
                for opt in opts:
                    opt.zero_grad()
                _, loss = self.model(
                    ratings, beta=None, gamma=self.gamma, dropout_rate=dropout_rate
                )
                loss.backward()
                for opt in opts:
                    opt.step()

    def epoch(self) -> float:
        """Train one epoch; its seconds."""
        t = time.perf_counter()
        self._run([self.opt_encoder], 3, 0.5)
        self.model.update_prior()
        self._run([self.opt_decoder], 1, 0.0)
        return time.perf_counter() - t

    def score(self, fold_in: sp.csr_matrix) -> torch.Tensor:
        self.model.eval()
        return self.model(torch.Tensor(fold_in.toarray()), calculate_loss=False)


def _copy_encoder(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Load the authors' encoder's weights into recvae's ``ResidualEncoder``."""
    with torch.no_grad():
        ours.input.weight.copy_(theirs.fc1.weight.t())  # recvae keeps one row per item
        ours.input.bias.copy_(theirs.fc1.bias)
        for k, fc in enumerate([theirs.fc2, theirs.fc3, theirs.fc4, theirs.fc5]):
            ours.layers[k].weight.copy_(fc.weight)
            ours.layers[k].bias.copy_(fc.bias)
        for k, ln in enumerate([theirs.ln1, theirs.ln2, theirs.ln3, theirs.ln4, theirs.ln5]):
            ours.norms[k].weight.copy_(ln.weight)
            ours.norms[k].bias.copy_(ln.bias)
        ours.head.weight.copy_(torch.cat([theirs.fc_mu.weight, theirs.fc_logvar.weight]))
        ours.head.bias.copy_(torch.cat([theirs.fc_mu.bias, theirs.fc_logvar.bias]))


def check_same_model(peer: ModuleType, n_items: int = 300) -> dict[str, float]:
    """The authors' loss and gradients against recvae's with the same weights and the same ε.

    Both models get the authors' initial weights (their old encoder too), a random batch of 64
    users and, without dropout (so that the two draw the same noise), the same seeded ε. Returns
    the relative differences of the loss and of the largest gradient entry per weight.
    """
    from recvae.models.autoencoders.nets import RecVAENet, RecVAEWithPrior, SparseRows
    from recvae.models.autoencoders.training import RecVAEStep

    torch.manual_seed(0)
    theirs = peer.VAE(hidden_dim=600, latent_dim=200, input_dim=n_items)
    ours = RecVAENet(n_items, 600, 5, 200, 0.0)
    _copy_encoder(ours.encoder, theirs.encoder)
    with torch.no_grad():
        ours.decoder.weight.copy_(theirs.decoder.weight)
        ours.decoder.bias.copy_(theirs.decoder.bias)
    trainee = RecVAEWithPrior(ours)
    _copy_encoder(trainee.prior.encoder, theirs.prior.encoder_old)
    rows = sp.random(64, n_items, density=0.1, format="csr", random_state=1, dtype=np.float32)
    rows.data[:] = 1.0
    rows = rows[np.diff(rows.indptr) > 0]  # their L2 normalisation divides by zero otherwise
    theirs.train()
    torch.manual_seed(7)
    _, their_loss = theirs(torch.Tensor(rows.toarray()), gamma=0.005, dropout_rate=0.0)
    their_loss.backward()
    x = SparseRows.from_csr(rows)
    nll, kl = trainee.encoder_terms(x, torch.Generator().manual_seed(7))
    loss = nll + (RecVAEStep(trainee, gamma=0.005).kl_weights(x) * kl).mean()
    loss.backward()
    pairs = {
        "fc1": (ours.encoder.input.weight.grad.t(), theirs.encoder.fc1.weight.grad),
        "fc5": (ours.encoder.layers[3].weight.grad, theirs.encoder.fc5.weight.grad),
        "ln1": (ours.encoder.norms[0].weight.grad, theirs.encoder.ln1.weight.grad),
        "fc_mu": (ours.encoder.head.weight.grad[:200], theirs.encoder.fc_mu.weight.grad),
        "fc_logvar": (ours.encoder.head.weight.grad[200:], theirs.encoder.fc_logvar.weight.grad),
        "decoder": (ours.decoder.weight.grad, theirs.decoder.weight.grad),
    }
    loss, their_loss = float(loss.detach()), float(their_loss.detach())
    out = {"loss": abs(loss - their_loss) / abs(their_loss)}
    for name, (a, b) in pairs.items():
        out[f"grad_{name}"] = float((a - b).abs().max() / b.abs().max())
    return out


# --------------------------------------------------------------------------- the comparison


def compare(
    name: str, ds: Dataset, peer: ModuleType, epochs: int, threads: int, seed: int | None = None,
) -> dict:
    """Alternate one epoch of recvae and one of the peer, ``epochs`` times. ``seed`` seeds both
    (the peer's global RNGs, recvae's ``seed``); None: each one's default (1337, 98765)."""
    torch.set_num_threads(threads)
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    trainer = PeerTrainer(peer, ds.train, seed=PEER_SEED if seed is None else seed)
    seeded = {} if seed is None else {"seed": seed}
    loads = []
    with tempfile.TemporaryDirectory(prefix="recvae-peer-") as ckpt:
        for e in range(1, epochs + 1):
            loads.append(os.getloadavg()[0])
            model = RecVAE(epochs=e, device="cpu", threads=threads, **seeded)
            model.fit(ds, checkpoint_dir=ckpt, resume=True)
            h = model.history_[-1]
            ours.append({"seconds": h["epoch_seconds"], "ndcg_at_100": h["val/ndcg_at_100"]})
            seconds = trainer.epoch()
            with torch.no_grad():
                result = evaluate(trainer.score, ds.validation, ks=(100,), batch_size=500)
            theirs.append({"seconds": seconds, "ndcg_at_100": result.means["ndcg_at_100"]})
            print(
                f"  {name} epoch {e}: recvae {ours[-1]['seconds']:.1f}s "
                f"NDCG@100 {ours[-1]['ndcg_at_100']:.4f} | peer {seconds:.1f}s "
                f"NDCG@100 {theirs[-1]['ndcg_at_100']:.4f}",
                flush=True,
            )
        final = evaluate(model.score, ds.validation, ks=(100,), batch_size=500)
    # recvae's model is its best epoch; the last epoch's validation is in its history, and its
    # standard error is about that of the best epoch's (same users).
    with torch.no_grad():
        peer_final = evaluate(trainer.score, ds.validation, ks=(100,), batch_size=500)
    ours_s = statistics.median(r["seconds"] for r in ours)
    theirs_s = statistics.median(r["seconds"] for r in theirs)
    return {
        "dataset": name,
        "seed": seed,
        "users": ds.train.shape[0],
        "items": ds.train.shape[1],
        "nnz": int(ds.train.nnz),
        "validation_users": final.n_users,
        "epochs": epochs,
        "threads": threads,
        "recvae_epochs": ours,
        "peer_epochs": theirs,
        "recvae_seconds_per_epoch": ours_s,
        "peer_seconds_per_epoch": theirs_s,
        "speedup": theirs_s / ours_s,
        "speedup_per_epoch_pair": [
            t["seconds"] / o["seconds"] for o, t in zip(ours, theirs, strict=True)
        ],
        "recvae_ndcg_at_100_last": ours[-1]["ndcg_at_100"],
        "peer_ndcg_at_100_last": theirs[-1]["ndcg_at_100"],
        "recvae_ndcg_at_100_best": max(r["ndcg_at_100"] for r in ours),
        "peer_ndcg_at_100_best": max(r["ndcg_at_100"] for r in theirs),
        "ndcg_stderr": max(final.stderr["ndcg_at_100"], peer_final.stderr["ndcg_at_100"]),
        "loadavg_1min_per_epoch": loads,
    }


def seed_spread(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per dataset run with two seeds or more: mean and sample sd over the seeds of each side's
    last-epoch validation NDCG@100 (is a gap between the two larger than a reseed?)."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["dataset"] for r in rows):
        ours = [r["recvae_ndcg_at_100_last"] for r in rows if r["dataset"] == name]
        theirs = [r["peer_ndcg_at_100_last"] for r in rows if r["dataset"] == name]
        if len(ours) > 1:
            out[name] = {
                "seeds": len(ours),
                "recvae_mean": statistics.mean(ours), "recvae_sd": statistics.stdev(ours),
                "peer_mean": statistics.mean(theirs), "peer_sd": statistics.stdev(theirs),
            }
    return out


def table(rows: list[dict]) -> str:
    head = (
        f"{'dataset':<16} {'seed':>5} {'users×items (nnz)':<26} {'ep':>3} {'recvae s/ep':>11} "
        f"{'peer s/ep':>9} {'speedup':>7}  {'val NDCG@100 last: recvae / peer (± se)':<40}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['users']}×{r['items']} ({r['nnz'] / 1e6:.2f}M)"
        ndcg = (
            f"{r['recvae_ndcg_at_100_last']:.4f} / {r['peer_ndcg_at_100_last']:.4f} "
            f"(± {r['ndcg_stderr']:.4f})"
        )
        seed = "-" if r.get("seed") is None else r["seed"]
        lines.append(
            f"{r['dataset']:<16} {seed:>5} {shape:<26} {r['epochs']:>3} "
            f"{r['recvae_seconds_per_epoch']:11.2f} {r['peer_seconds_per_epoch']:9.2f} "
            f"{r['speedup']:6.2f}×  {ndcg:<40}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-dir", type=Path, default=REPO.parent / "peers" / "RecVAE",
                   help="folder holding the authors' model.py (default: ../peers/RecVAE)")
    p.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder with citeulike-a/ and gowalla/ (default: ../shared/data)")
    p.add_argument("--datasets", default="ml-latest-small,citeulike-a,ml20m-like:3",
                   help=f"comma-separated, each NAME or NAME:EPOCHS; names: {', '.join(DATASETS)}")
    p.add_argument("--epochs", type=int, default=10, help="epochs where --datasets names none")
    p.add_argument("--scale", type=float, default=0.1, help="ml20m-like: fraction of ML-20M")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--seeds", default="",
                   help="comma-separated seeds, each seeding both trainings (default: each "
                        "one's own default seed, one run); several give the seed-to-seed spread")
    args = p.parse_args(argv)
    seeds: list[int | None] = [int(x) for x in args.seeds.split(",") if x.strip()] or [None]

    peer = import_peer(args.peer_dir)
    commit = _peer_commit(args.peer_dir)
    same = check_same_model(peer)
    print(
        "same weights and noise as the authors' model: relative differences "
        + ", ".join(f"{k} {v:.1e}" for k, v in same.items()),
        flush=True,
    )
    results: dict[str, Any] = {
        "benchmark": "recvae_peer",
        "peer": {"repository": "ilya-shenbin/RecVAE", "dir": str(args.peer_dir), "commit": commit},
        "same_model_check": same,
        "runs": [],
    }
    for spec in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        name, _, epochs = spec.partition(":")
        try:
            ds = load_dataset(name, args.shared_data, args.scale)
        except RecvaeError as e:  # a missing or unreadable data file: say which
            raise SystemExit(f"{name}: {e} (see --shared-data)") from None
        print(f"{name}: {ds.summary()}", flush=True)
        for seed in seeds:
            results["runs"].append(
                compare(name, ds, peer, int(epochs) if epochs else args.epochs, args.threads,
                        seed)
            )
            write_json(str(args.json) if args.json else None, results)
    results["seed_spread"] = seed_spread(results["runs"])
    print()
    print(table(results["runs"]))
    for name, spread in results["seed_spread"].items():
        print(f"{name}, {spread['seeds']} seeds, last-epoch validation NDCG@100 mean ± sd: recvae "
              f"{spread['recvae_mean']:.4f} ± {spread['recvae_sd']:.4f}, peer "
              f"{spread['peer_mean']:.4f} ± {spread['peer_sd']:.4f}")
    print(
        "s/ep: median seconds per training epoch (3 encoder passes + 1 decoder pass, validation "
        "excluded), the two trainings alternating epoch by epoch; speedup = peer / recvae."
    )
    write_json(str(args.json) if args.json else None, results)


def _peer_commit(peer_dir: Path) -> str | None:
    """The peer checkout's commit, when it is a git work tree (or says so in PEER_COMMIT)."""
    import subprocess

    marker = peer_dir / "PEER_COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    proc = subprocess.run(
        ["git", "-C", str(peer_dir), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


if __name__ == "__main__":
    main()
