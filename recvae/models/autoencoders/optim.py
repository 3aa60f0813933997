"""The autoencoders' optimizers: Adam for dense gradients, lazy Adam for row-sparse ones.

With the sampled softmax the item-indexed matrices get row-sparse gradients (only the rows a
batch touched); :class:`MixedAdam` runs torch's (fused) Adam on the dense parameters and
:class:`LazyAdam` on those, behind the one ``zero_grad`` / ``step`` interface the steps of
:mod:`recvae.models.autoencoders.training` call.

Example::

    opt = MixedAdam(net.parameters(), lr=1e-3, l2=0.0, sparse=row_sparse_parameters(net))
    opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def adam_impl(device: torch.device) -> dict[str, bool]:
    """Adam's fused kernel (one pass over each parameter) where this torch build has it."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return {}
    return {"fused": True}


class LazyAdam(torch.optim.Optimizer):
    """Adam for row-sparse gradients (coalesced sparse COO, one index per touched row): the
    moments and the weights of the touched rows are updated; the other rows, and their moments,
    are left as they are (TF's LazyAdam, ``torch.optim.SparseAdam``'s rule).

    Written here rather than using ``torch.optim.SparseAdam`` because that one costs O(n_items)
    per step on CPU (its ``sparse_mask`` and dense-plus-sparse ``add_`` swept the whole 10^6 × 64
    moments: ~1 s per step, against ~0.1 s for these gathers and scatters of the touched rows;
    /tmp profile, 1 thread). ``weight_decay`` adds ``weight_decay · W`` of the touched rows to
    their gradient (coupled L2, as Adam's).
    """

    def __init__(
        self, params: Iterable[nn.Parameter], lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            (b1, b2), lr, eps, decay = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, g = p.grad._indices()[0], p.grad._values()
                # The layers' gradients hold each row once, in order, but autograd drops the
                # coalesced flag: check it in O(rows) rather than sort again.
                if not (p.grad.is_coalesced() or bool((rows[1:] > rows[:-1]).all())):
                    grad = p.grad.coalesce()
                    rows, g = grad.indices()[0], grad.values()
                if decay:
                    g = g + decay * p.index_select(0, rows)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m = state["exp_avg"].index_select(0, rows).mul_(b1).add_(g, alpha=1 - b1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                denom = v.sqrt_().div_(math.sqrt(1 - b2**t)).add_(eps)
                p.index_add_(0, rows, m.div_(denom), alpha=-lr / (1 - b1**t))


class MixedAdam:
    """Adam with a coupled L2 penalty: torch's (fused) Adam on dense gradients, and
    :class:`LazyAdam` on the parameters in ``sparse``, whose gradients are row-sparse.

    ``l2`` is the λ of a penalty λ·Σ‖W‖² on the weight matrices (not the biases): its gradient
    2λ·W is what Adam's coupled ``weight_decay`` adds. Large catalogues (``softmax: sampled``)
    give the item-indexed matrices sparse gradients: dense Adam would read and write all
    n_items rows of the weights, the gradient and both moments on every step, whatever the batch
    touched, which at 10^6 items costs more than the step itself. Lazy Adam updates the touched
    rows only (the untouched rows' moments do not decay), and the L2 penalty applies to them.

    Example::

        opt = MixedAdam(net.parameters(), lr=1e-3, l2=0.0, sparse=row_sparse_parameters(net))
        opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(
        self, params: Iterable[nn.Parameter], *, lr: float, l2: float = 0.0,
        sparse: Iterable[nn.Parameter] = (),
    ) -> None:
        params = list(params)
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in params if id(p) not in sparse_ids]
        lazy = [p for p in params if id(p) in sparse_ids]
        self.dense = torch.optim.Adam(
            [{"params": [p for p in dense if p.ndim >= 2], "weight_decay": 2.0 * l2},
             {"params": [p for p in dense if p.ndim < 2], "weight_decay": 0.0}],
            lr=lr,
            **adam_impl(params[0].device),
        )
        groups = [{"params": [p for p in lazy if p.ndim >= 2], "weight_decay": 2.0 * l2},
                  {"params": [p for p in lazy if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        self.lazy = LazyAdam(groups, lr=lr) if groups else None

    def optimizers(self, name: str) -> dict[str, torch.optim.Optimizer]:
        """The torch optimizers by name, for checkpoints: ``name`` and ``name.sparse``."""
        return {name: self.dense} | ({f"{name}.sparse": self.lazy} if self.lazy else {})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.lazy is not None:
            self.lazy.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        if self.lazy is not None:
            self.lazy.step()
