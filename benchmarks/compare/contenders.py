"""The same RealNVP in clayflow, in a hand-written plain-PyTorch reference, and in each peer
library, behind one interface (``Contender``) so the workloads treat them alike.

The common architecture: ``LAYERS`` affine couplings whose masks alternate between the first
and the second half of the features, an MLP conditioner ``in -> 128 -> ReLU -> 128 -> ReLU ->
2 * D/2`` (one pass gives shift and scale), last layer zero-initialised (so every flow starts
as its N(0, I) base), float32. Where a library cannot follow it exactly, ``Contender.differs``
says how it departs.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

import clayflow
from clayflow import models
from clayflow.train.schedule import make_optimizer

LAYERS = 8
HIDDEN = 128
CLAMP = 2.0  # soft clamp of the log-scale where a library needs one


@dataclass
class Contender:
    """One library's build of the common flow.

    ``log_prob(x) -> (B,)``, ``sample(n) -> (n, D)``, ``to_latent(x) -> z`` (data -> latent)
    and ``to_data(z) -> x`` are the library's own public calls; ``module`` holds the parameters.
    ``optimizer`` is the Adam a user of the library gets: torch's default for the peers and a
    hand-written loop, clayflow's trainer's (``make_optimizer``: fused) for clayflow.
    """

    name: str
    version: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    to_latent: Callable[[Tensor], Tensor]
    to_data: Callable[[Tensor], Tensor]
    differs: str = ""
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam  # (parameters, lr=...)


def mlp(in_features: int, out_features: int) -> nn.Sequential:
    """The common conditioner, last layer zeroed."""
    net = nn.Sequential(
        nn.Linear(in_features, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, out_features),
    )
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def clayflow_adam(parameters, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``clayflow train`` builds (``--optimizer adam``)."""
    return make_optimizer(parameters, "adam", lr)


def _version(package: str) -> str:
    return importlib.metadata.version(package)


# --- clayflow ----------------------------------------------------------------------------------


def flow_contender(
    name: str, version: str, flow: nn.Module, differs: str, optimizer=torch.optim.Adam
) -> Contender:
    """A contender for a module with clayflow's interface: ``forward`` and ``inverse``
    returning ``(output, logabsdet)``, ``log_prob`` and ``sample``."""
    return Contender(
        name,
        version,
        flow,
        flow.log_prob,
        flow.sample,
        lambda x: flow(x)[0],
        lambda z: flow.inverse(z)[0],
        differs,
        optimizer,
    )


def clayflow_contender(flow: clayflow.Flow, differs: str) -> Contender:
    """A clayflow model, trained with the Adam its trainer builds."""
    return flow_contender("clayflow", clayflow.__version__, flow, differs, clayflow_adam)


def build_clayflow(features: int) -> Contender:
    flow = models.realnvp(features, layers=LAYERS, hidden=HIDDEN, depth=2, mask="half")
    return clayflow_contender(
        flow,
        "log-scale a * tanh(r) with a learned per-feature a (RealNVP's choice); its trainer's fused Adam",
    )


# --- plain PyTorch reference -------------------------------------------------------------------


class ReferenceCoupling(nn.Module):
    """z_b = x_b * exp(s) + t, (t, r) = net(x_a), s = a * tanh(r); halves by slicing."""

    def __init__(self, features: int, flip: bool):
        super().__init__()
        self.flip = flip
        self.split = features // 2 if not flip else features - features // 2
        kept = self.split
        self.net = mlp(kept, 2 * (features - kept))
        self.scale = nn.Parameter(torch.ones(features - kept))

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.flip:
            b, a = x[:, : x.shape[1] - self.split], x[:, x.shape[1] - self.split :]
        else:
            a, b = x[:, : self.split], x[:, self.split :]
        return a, b

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([b, a] if self.flip else [a, b], dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self._halves(x)
        t, r = self.net(a).chunk(2, dim=1)
        s = self.scale * torch.tanh(r)
        return self._join(a, b * torch.exp(s) + t), s.sum(dim=1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self._halves(z)
        t, r = self.net(a).chunk(2, dim=1)
        s = self.scale * torch.tanh(r)
        return self._join(a, (b - t) * torch.exp(-s)), -s.sum(dim=1)


class ReferenceRealNVP(nn.Module):
    """What one writes by hand with no framework: a list of couplings and a N(0, I) base."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.couplings = nn.ModuleList(ReferenceCoupling(features, flip=i % 2 == 1) for i in range(LAYERS))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for coupling in self.couplings:
            x, ld = coupling(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for coupling in reversed(self.couplings):
            z, ld = coupling.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def log_prob(self, x: Tensor) -> Tensor:
        z, logdet = self(x)
        return -0.5 * (z**2).sum(dim=1) - 0.5 * self.features * 1.8378770664093453 + logdet

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.inverse(torch.randn(n, self.features))[0]


def build_reference(features: int) -> Contender:
    return flow_contender(
        "plain PyTorch",
        torch.__version__.split("+")[0],
        ReferenceRealNVP(features),
        "the same math as clayflow, written by hand",
    )


# --- peers -------------------------------------------------------------------------------------


class _ContextFree(nn.Module):
    """nflows calls its nets as ``net(x, context)``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.net = mlp(in_features, out_features)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def build_nflows(features: int) -> Contender:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import AffineCouplingTransform, CompositeTransform

    transforms = []
    for i in range(LAYERS):
        mask = torch.zeros(features)  # > 0: transformed, <= 0: kept
        half = slice(features // 2, None) if i % 2 == 0 else slice(None, features // 2)
        mask[half] = 1
        transforms.append(AffineCouplingTransform(mask, _ContextFree))
    flow = Flow(CompositeTransform(transforms), StandardNormal([features]))
    return nflows_contender(flow, "scale sigmoid(r + 2) + 1e-3 (fixed in nflows)")


def nflows_contender(flow: nn.Module, differs: str) -> Contender:
    """An nflows ``Flow``, whose ``transform_to_noise`` maps data -> latent."""
    return Contender(
        "nflows",
        _version("nflows"),
        flow,
        flow.log_prob,
        flow.sample,
        flow.transform_to_noise,
        lambda z: flow._transform.inverse(z)[0],
        differs,
    )


def build_normflows(features: int) -> Contender:
    import normflows as nf

    flows = []
    for i in range(LAYERS):
        net = nf.nets.MLP([features // 2, HIDDEN, HIDDEN, 2 * (features - features // 2)], init_zeros=True)
        flows.append(nf.flows.AffineCouplingBlock(net, scale_map="exp", split_mode="channel"))
        if i < LAYERS - 1:
            flows.append(nf.flows.Permute(features, mode="swap"))
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(features, trainable=False), flows)
    return Contender(
        "normflows",
        _version("normflows"),
        flow,
        flow.log_prob,
        lambda n: flow.sample(n)[0],
        flow.inverse,
        flow.forward,
        "unbounded scale exp(r); halves swapped by a Permute('swap') layer between couplings",
    )


def build_zuko(features: int) -> Contender:
    import zuko
    from zuko.flows.coupling import GeneralCouplingTransform

    couplings = []
    for i in range(LAYERS):
        mask = torch.arange(features) < features // 2  # True: kept
        couplings.append(
            GeneralCouplingTransform(
                features, mask=mask if i % 2 == 0 else ~mask, hidden_features=(HIDDEN, HIDDEN)
            )
        )
        last = couplings[-1].hyper[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    flow = zuko.flows.Flow(
        couplings,
        zuko.flows.UnconditionalDistribution(
            zuko.distributions.DiagNormal, torch.zeros(features), torch.ones(features), buffer=True
        ),
    )
    return zuko_contender(
        flow, "log-scale r / (1 + |r| / 6.9) (zuko's soft bound); shift and scale interleaved in the output"
    )


def zuko_contender(flow: nn.Module, differs: str) -> Contender:
    """A zuko flow: calling it gives the distribution, whose ``transform`` maps data -> latent."""
    return Contender(
        "zuko",
        _version("zuko"),
        flow,
        lambda x: flow().log_prob(x),
        lambda n: flow().sample((n,)),
        lambda x: flow().transform(x),
        lambda z: flow().transform.inv(z),
        differs,
    )


def build_freia(features: int) -> Contender:
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    inn = Ff.SequenceINN(features)
    for _ in range(LAYERS // 2):  # each GLOW block is two couplings: on one half, then the other
        inn.append(Fm.GLOWCouplingBlock, subnet_constructor=mlp, clamp=CLAMP)

    def log_prob(x: Tensor) -> Tensor:
        z, logdet = inn(x)
        return -0.5 * (z**2).sum(dim=1) - 0.5 * features * 1.8378770664093453 + logdet

    def sample(n: int) -> Tensor:
        return inn(torch.randn(n, features), rev=True)[0]

    return Contender(
        "FrEIA",
        _version("FrEIA"),
        inn,
        log_prob,
        sample,
        lambda x: inn(x)[0],
        lambda z: inn(z, rev=True)[0],
        "log-scale 2 * 0.636 * atan(r / 2) (FrEIA's clamp); no distributions, so the N(0, I) base is written by hand",
    )


BUILDERS = {
    "clayflow": build_clayflow,
    "plain PyTorch": build_reference,
    "nflows": build_nflows,
    "normflows": build_normflows,
    "zuko": build_zuko,
    "FrEIA": build_freia,
}
PEERS = ("nflows", "normflows", "zuko", "FrEIA")


def compiled(contender: Contender) -> Contender:
    """The same flow with ``forward``, ``inverse`` and ``log_prob`` under ``torch.compile``:
    clayflow's own ``Flow.compile()``; for the plain reference, the same three by hand."""
    module = contender.module
    if isinstance(module, clayflow.Flow):
        module.compile()
    else:
        for method in ("forward", "inverse", "log_prob"):
            setattr(module, method, torch.compile(getattr(module, method)))
    return flow_contender(
        f"{contender.name} + compile",
        contender.version,
        module,
        f"{contender.differs}; torch.compile, default mode",
        contender.optimizer,
    )


def with_fused_adam(contender: Contender) -> Contender:
    """The contender trained with clayflow's (fused) Adam: isolates what the optimiser gives."""
    return replace(contender, name=f"{contender.name} + fused Adam", optimizer=clayflow_adam)
