"""Gaussian statistics of features: streaming moments, moving averages and the KL divergence.

Small pure functions so tests can check them against numpy and torch.distributions.
Conventions: covariances are population (divide by n) maximum-likelihood estimates; the KL is
KL(N_real || N_syn), as in the D3S objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def feature_samples(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """Turn a feature map into rows of samples: every (image, h, w) position, or one pooled row per image."""
    if x.dim() == 2:
        return x
    if pooling == "positions":
        return x.transpose(1, -1).reshape(-1, x.shape[1])
    if pooling == "image":
        return x.flatten(2).mean(2)
    raise ValueError(f"pooling must be 'positions' or 'image', got {pooling!r}")


def affine_moments(
    mean: torch.Tensor, cov: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of y = W x + b for x ~ (mean, cov): (W mean + b, W cov W^T)."""
    y_mean = weight @ mean + (bias if bias is not None else 0)
    return y_mean, weight @ cov @ weight.T


def batch_moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population covariance of rows of `samples` (differentiable, in the input dtype)."""
    mean = samples.mean(0)
    centred = samples - mean
    return mean, centred.T @ centred / samples.shape[0]


def feature_moments(x: torch.Tensor, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_moments(feature_samples(x, pooling))`, computed faster for per-position samples.

    The hot path of every D3S step: one channel-major copy and E[x x^T] - mu mu^T, instead of a
    position-major copy plus a centred copy (about 25 % less time forward + backward on CPU).
    Uncentred float32 is accurate here: BatchNorm inputs have means of the order of their spread.
    """
    if pooling != "positions" or x.dim() != 4:
        return batch_moments(feature_samples(x, pooling))
    f = x.transpose(0, 1).reshape(x.shape[1], -1)
    mean = f.mean(1)
    return mean, f @ f.T / f.shape[1] - torch.outer(mean, mean)


class MomentAccumulator:
    """Streaming mean and covariance over batches of rows; memory does not grow with the data.

    Each batch is centred on its own mean in its own dtype (cheap and accurate in float32) and
    merged into float64 running moments with Chan et al.'s pairwise update.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, samples: torch.Tensor) -> None:
        """Add rows of samples [n, D]."""
        n = samples.shape[0]
        if n == 0:
            return
        b_mean = samples.mean(0)
        centred = samples - b_mean
        self._merge(n, b_mean, centred.T @ centred)

    @torch.no_grad()
    def update_features(self, x: torch.Tensor, pooling: str) -> None:
        """Add a feature map [B, C, H, W]; same result as update(feature_samples(x, pooling)), faster.

        The batch scatter is E[x x^T] - mu mu^T in the input dtype (one channel-major copy, no
        centred copy); batches are then merged in float64, so the error does not grow with the data.
        """
        if pooling != "positions" or x.dim() != 4:
            return self.update(feature_samples(x, pooling))
        f = x.transpose(0, 1).reshape(x.shape[1], -1)
        n = f.shape[1]
        b_mean = f.mean(1)
        self._merge(n, b_mean, f @ f.T - n * torch.outer(b_mean, b_mean))

    def _merge(self, n: int, b_mean: torch.Tensor, b_scatter: torch.Tensor) -> None:
        """Chan et al.'s pairwise merge of (count, mean, scatter) into the float64 running moments."""
        b_mean, b_scatter = b_mean.double(), b_scatter.double()
        total = self.count + n
        delta = b_mean - self.mean
        self.scatter += b_scatter + torch.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def covariance(self) -> torch.Tensor:
        return self.scatter / max(self.count, 1)


@dataclass
class GaussianTarget:
    """The real-data Gaussian of one layer, prepared once: mean, ridged Cholesky factor and log-det."""

    mean: torch.Tensor  # float64 [D]
    chol: torch.Tensor  # float64 [D, D], lower
    logdet: torch.Tensor  # float64 scalar
    ridge: float

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


def layer_ridge(cov: torch.Tensor, ridge: float) -> float:
    """Ridge as a fraction of the mean variance, so one setting suits layers of any scale.

    Needed on both sides: the first BN layer's real covariance is singular (a 3x3 conv on C
    channels spans at most 9C directions) and a small synthetic set has fewer samples than dims.
    """
    return float(ridge * torch.diagonal(cov).mean().clamp_min(1e-12))


def gaussian_target(mean: torch.Tensor, cov: torch.Tensor, ridge: float) -> GaussianTarget:
    cov = cov.double()
    eps = layer_ridge(cov, ridge)
    chol = torch.linalg.cholesky(cov + eps * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device))
    return GaussianTarget(mean.double(), chol, 2 * torch.log(torch.diagonal(chol)).sum(), eps)


@dataclass
class GaussianTargets:
    """The real Gaussians of several layers of one width, stacked so one batched call serves them all."""

    mean: torch.Tensor  # float64 [L, D]
    chol: torch.Tensor  # float64 [L, D, D]
    logdet: torch.Tensor  # float64 [L]
    ridge: torch.Tensor  # float64 [L]

    @classmethod
    def stack(cls, targets: list[GaussianTarget]) -> GaussianTargets:
        device = targets[0].mean.device
        return cls(
            torch.stack([t.mean for t in targets]),
            torch.stack([t.chol for t in targets]),
            torch.stack([t.logdet for t in targets]),
            torch.tensor([t.ridge for t in targets], dtype=torch.float64, device=device),
        )

    @property
    def dim(self) -> int:
        return self.mean.shape[-1]


def gaussian_kl_batched(targets: GaussianTargets, mean_s: torch.Tensor, cov_s: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_T,l, Sigma_T,l) || N(mu_S,l, Sigma_S,l)) for each of L layers of one width, in float64.

    One batched Cholesky (`cholesky_ex`: it reports a failed factorisation in `info` instead of
    raising, which would read the result back to the host) and batched triangular solves. A
    layer whose ridged Sigma_S is not positive definite gets NaN, for the caller's device-side
    finiteness check. Gradients flow through mean_s [L, D] and cov_s [L, D, D].
    """
    d = targets.dim
    eye = torch.eye(d, dtype=torch.float64, device=cov_s.device)
    cov_s = cov_s.double() + targets.ridge[:, None, None] * eye
    chol_s, info = torch.linalg.cholesky_ex(cov_s)
    solved = torch.linalg.solve_triangular(chol_s, targets.chol, upper=False)
    trace = solved.square().sum((-2, -1))
    diff = (mean_s.double() - targets.mean).unsqueeze(-1)
    maha = torch.linalg.solve_triangular(chol_s, diff, upper=False).square().sum((-2, -1))
    logdet_s = 2 * torch.log(torch.diagonal(chol_s, dim1=-2, dim2=-1)).sum(-1)
    kl = 0.5 * (trace + maha - d + logdet_s - targets.logdet)
    return torch.where(info == 0, kl, torch.full_like(kl, float("nan")))


def gaussian_kl(target: GaussianTarget, mean_s: torch.Tensor, cov_s: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_T, Sigma_T) || N(mu_S, Sigma_S)) in float64, with the target's ridge added to Sigma_S.

    1/2 [tr(S^-1 T) + (mu_S - mu_T)^T S^-1 (mu_S - mu_T) - D + logdet S - logdet T]; gradients flow
    through mean_s and cov_s. NaN when Sigma_S + ridge I is not positive definite.
    """
    return gaussian_kl_batched(GaussianTargets.stack([target]), mean_s[None], cov_s[None])[0]


class MovingMoments:
    """Whole-set statistics of a synthetic set that is optimised one minibatch (block) at a time.

    The estimate is the size-weighted average of the live block's moments (which carry the
    gradient) and the stored, detached moments of every other block. A block's stored moments are
    an exponential moving average over its visits (`momentum`; 0 keeps the latest), which smooths
    the random augmentation. Raw second moments E[x x^T] are averaged, not covariances, so the
    average of the blocks is exactly the whole-set covariance. Memory: one D x D matrix per block.
    """

    def __init__(self, momentum: float, sizes: list[int]):
        self.momentum = momentum
        self.weights = [n / sum(sizes) for n in sizes]
        self.means: list[torch.Tensor] | None = None
        self.seconds: list[torch.Tensor] | None = None
        self.mean: torch.Tensor | None = None  # sum_i w_i mean_i (kept in step with the blocks)
        self.second: torch.Tensor | None = None

    @torch.no_grad()
    def initialise(self, block_moments: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store every block's (mean, covariance): the estimate then equals the exact whole-set statistics."""
        if len(block_moments) != len(self.weights):
            raise ValueError(f"{len(block_moments)} blocks given, {len(self.weights)} expected")
        self.means = [m.detach().clone() for m, _ in block_moments]
        self.seconds = [(c + torch.outer(m, m)).detach().clone() for m, c in block_moments]
        self.mean = sum(w * m for w, m in zip(self.weights, self.means))
        self.second = sum(w * s for w, s in zip(self.weights, self.seconds))

    def combine(self, b: int, mean_b: torch.Tensor, cov_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-set (mean, covariance) with block `b` live; gradients flow through the live block only."""
        if self.means is None or len(self.weights) == 1:
            return mean_b, cov_b
        w = self.weights[b]
        second_b = cov_b + torch.outer(mean_b, mean_b)
        mean = self.mean + w * (mean_b - self.means[b])
        second = self.second + w * (second_b - self.seconds[b])
        return mean, second - torch.outer(mean, mean)

    def state_dict(self) -> dict:
        if self.means is None:
            return {}
        cpu = lambda ts: [t.cpu() for t in ts]  # noqa: E731
        return {
            "means": cpu(self.means),
            "seconds": cpu(self.seconds),
            "mean": self.mean.cpu(),
            "second": self.second.cpu(),
        }

    def load_state_dict(self, state: dict, device="cpu") -> None:
        if not state:
            return
        self.means = [t.to(device) for t in state["means"]]
        self.seconds = [t.to(device) for t in state["seconds"]]
        self.mean, self.second = state["mean"].to(device), state["second"].to(device)

    @torch.no_grad()
    def update(self, b: int, mean_b: torch.Tensor, cov_b: torch.Tensor) -> None:
        """Fold the live block's moments into its stored ones (after its optimisation step's forward)."""
        if self.means is None:
            raise RuntimeError("MovingMoments.update before initialise")
        m, w = self.momentum, self.weights[b]
        new_mean = m * self.means[b] + (1 - m) * mean_b.detach()
        new_second = m * self.seconds[b] + (1 - m) * (cov_b + torch.outer(mean_b, mean_b)).detach()
        self.mean += w * (new_mean - self.means[b])
        self.second += w * (new_second - self.seconds[b])
        self.means[b], self.seconds[b] = new_mean, new_second
