"""Baselines for in-context linear classification: PoolBayesClassifier, GaussianBayesClassifier,
LogisticRegression and PriorPrediction.

Data: labels y in {-1, +1} with P(y = 1 | x, w) = sigmoid(beta w.x), beta > 0, x ~ N(0, I_D), and
w from a pool of M tasks (M, D) or the Gaussian prior N(0, prior_std^2 I). Every predictor has the
call shape `predictor(xs, ys) -> logits (batch, n_points)` with xs (batch, n_points, n_dims) and ys
(batch, n_points) holding -1.0 / +1.0; output k uses only the pairs 0..k-1 and xs[:, k] and is the
log-odds of P(y_k = +1). Float64 inputs are computed in float64, everything else in float32, and
the output has the input's dtype. Log-probabilities are formed with logsigmoid and logsumexp, so a
large beta (margins beta w.x of hundreds) neither overflows nor saturates the logits.

Notation: z_j(w) = beta w.x_j, and the log-likelihood of the first k pairs is
l_k(w) = sum_{j<k} logsigmoid(y_j z_j(w)).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from iclab.estimators.regression import _check_inputs, _check_pool, _compute_dtype
from iclab.seeding import content_key, make_generator

CLASSIFICATION_STREAM = 6  # seeding stream of the Gaussian-prior classifier's Monte-Carlo draws
MAX_BETA = 16.0
# A pool block holds at most this many (sequence, position, task) elements per temporary.
BLOCK_ELEMENTS = 2**22
# Self-normalised importance sampling handles beta <= SNIS_MAX_BETA; above it the weights
# degenerate (effective sample size ~3 at beta = 16) and elliptical slice sampling takes over.
# At beta = 4, D = 4, K = 16 (the classification-tiny preset) SNIS with the default draws was
# measured 7x more accurate than ESS at the same cost (RMS 0.011 against 0.073), hence 4.
SNIS_MAX_BETA = 4.0
# Defaults (D = 8, K = 16, 4096 sequences, one core; see GaussianBayesClassifier for the errors).
DEFAULT_DRAWS = 2**13
DEFAULT_ITERATIONS = 80
DEFAULT_BURN_IN = 8
N_BATCHES = 8  # batch means of the MCMC error
MAX_SHRINKS = 60  # slice-bracket shrinks before a chain keeps its state for that iteration


def _check_beta(beta: float) -> float:
    if not (isinstance(beta, int | float) and 0 < beta <= MAX_BETA):
        raise ValueError(f"beta must be a number in (0, {MAX_BETA:g}], got {beta!r}")
    return float(beta)


def _check_prior_std(prior_std: float) -> float:
    if not (isinstance(prior_std, int | float) and prior_std > 0 and math.isfinite(prior_std)):
        raise ValueError(f"prior_std must be a finite number > 0, got {prior_std!r}")
    return float(prior_std)


def _check_count(name: str, value: int, minimum: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _inputs(xs: Tensor, ys: Tensor, n_dims: int | None = None) -> tuple[Tensor, Tensor]:
    _check_inputs(xs, ys, n_dims)
    dtype = _compute_dtype(xs.dtype)
    return xs.to(dtype), ys.to(dtype)


def _exclusive_cumsum(terms: Tensor, dim: int = 1) -> Tensor:
    """Sums over the entries before each index along `dim` (0 at index 0)."""
    out = torch.zeros_like(terms)
    n = terms.shape[dim]
    if n > 1:
        torch.cumsum(terms.narrow(dim, 0, n - 1), dim=dim, out=out.narrow(dim, 1, n - 1))
    return out


class PriorPrediction:
    """The prior's prediction: logit 0 at every position.

    Both priors (a pool drawn from a symmetric distribution in expectation, and N(0, prior_std^2 I))
    are symmetric under w -> -w, so P(y = 1 | x) = 1/2 before any pair is seen."""

    name = "Prior"

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Logits (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        _check_inputs(xs, ys)
        return xs.new_zeros(xs.shape[:2])

    __call__ = predict


class PoolBayesClassifier:
    """Posterior predictive under the uniform prior over the pool's M tasks w_1..w_M (exact).

    pi_i(S_k) = exp(l_k(w_i)) / sum_m exp(l_k(w_m)), p_k = sum_i pi_i sigmoid(z_k(w_i)), returned as
        logit(p_k) = logsumexp_i(l_k(w_i) + logsigmoid(z_k(w_i)))
                   - logsumexp_i(l_k(w_i) + logsigmoid(-z_k(w_i)))
    (the normaliser of pi cancels). Position 0 has l_0 = 0: the logit of the pool's mean
    sigmoid(beta w_i.x_0), not 0 in general. The pool is streamed in blocks of `block_size` tasks
    (None: about BLOCK_ELEMENTS / (batch n_points), at least 1) folded into a running logsumexp,
    so memory does not grow with M. Uses logsigmoid(-z) = logsigmoid(z) - z and
    logsigmoid(y z) = logsigmoid(z) - z [y = -1], one logsigmoid per element.
    """

    name = "PoolBayes"

    def __init__(self, pool: Tensor, beta: float, block_size: int | None = None):
        self.pool = _check_pool(pool)
        self.beta = _check_beta(beta)
        if block_size is not None:
            _check_count("block_size", block_size, 1)
        self.block_size = block_size

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Logits (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        xs_c, ys_c = _inputs(xs, ys, self.pool.shape[1])
        batch, n_points, n_dims = xs.shape
        pool = self.pool.to(xs.device, xs_c.dtype) * self.beta
        size = self.block_size or max(1, BLOCK_ELEMENTS // max(1, batch * n_points))
        negative = (ys_c < 0).to(xs_c.dtype)[..., None]  # (batch, n_points, 1)
        flat = xs_c.reshape(batch * n_points, n_dims)
        log_pos = xs_c.new_full((batch, n_points), -math.inf)
        log_neg = xs_c.new_full((batch, n_points), -math.inf)
        for start in range(0, len(pool), size):
            z = (flat @ pool[start : start + size].T).view(batch, n_points, -1)
            log_sig = F.logsigmoid(z)
            log_lik = _exclusive_cumsum(log_sig - z * negative)  # l_k(w_i), (batch, K, block)
            a = log_lik.add_(log_sig)  # l_k + logsigmoid(z_k)
            log_pos = torch.logaddexp(log_pos, torch.logsumexp(a, dim=-1))
            log_neg = torch.logaddexp(log_neg, torch.logsumexp(a.sub_(z), dim=-1))
        return (log_pos - log_neg).to(xs.dtype)

    __call__ = predict


def _newton_logistic(
    pairs: Tensor, mask: Tensor, prior_std: float, max_iterations: int
) -> tuple[Tensor, Tensor]:
    """MAP of the L2-regularised logistic loss per (sequence, prefix), by damped Newton from 0.

    pairs (batch, J, D) holds beta y_j x_j, so the margins are m_j = pairs_j . w; mask (P, J) is 1
    where prefix p uses pair j. Minimises f(w) = sum_j mask softplus(-m_j) + |w|^2 / (2 prior_std^2)
    for w (batch, P, D). Returns (w, gradient at w).
    """
    batch, _, n_dims = pairs.shape
    n_prefixes = mask.shape[0]
    precision = 1.0 / prior_std**2
    eps = torch.finfo(pairs.dtype).eps
    gradient_tol = 1e-10 if pairs.dtype == torch.float64 else 1e-5
    eye = torch.eye(n_dims, dtype=pairs.dtype, device=pairs.device)
    w = pairs.new_zeros(batch, n_prefixes, n_dims)

    def objective(w: Tensor) -> Tensor:
        margins = w @ pairs.transpose(1, 2)  # (batch, P, J)
        return (F.softplus(-margins) * mask).sum(-1) + 0.5 * precision * w.square().sum(-1)

    def gradient(w: Tensor) -> tuple[Tensor, Tensor]:
        margins = w @ pairs.transpose(1, 2)
        return (torch.sigmoid(-margins) * mask) @ pairs * -1 + precision * w, margins

    value = objective(w)
    done = torch.zeros(batch, n_prefixes, dtype=torch.bool, device=pairs.device)
    for _ in range(max_iterations):
        grad, margins = gradient(w)
        done |= grad.norm(dim=-1) <= gradient_tol
        if bool(done.all()):
            break
        curvature = torch.sigmoid(margins) * torch.sigmoid(-margins) * mask  # (batch, P, J)
        hessian = torch.einsum("bpj,bjd,bje->bpde", curvature, pairs, pairs) + precision * eye
        step = -torch.linalg.solve(hessian, grad)
        slope = (grad * step).sum(-1)  # < 0: the Hessian is positive definite
        # Backtracking (Armijo) line search, batched: halve the step where f did not drop enough.
        size = torch.where(done, 0.0, 1.0).to(pairs.dtype)
        for _ in range(60):
            trial = objective(w + size[..., None] * step)
            bad = (trial > value + 1e-4 * size * slope) & (size > 0)
            if not bool(bad.any()):
                break
            size = torch.where(bad, size / 2, size)
        else:
            size = torch.where(bad, 0.0, size)
        moved = size[..., None] * step
        w = w + moved
        value = objective(w)
        # Float rounding stops progress before the gradient tolerance (float32): converged then.
        done |= moved.norm(dim=-1) <= 10 * eps * (1 + w.norm(dim=-1))
    grad, _ = gradient(w)
    return w, grad


class LogisticRegression:
    """In-context L2-regularised logistic regression (the analogue of ridge): at each prefix k

        w_hat_k = argmin_w sum_{j<k} log(1 + exp(-beta y_j w.x_j)) + |w|^2 / (2 prior_std^2),

    the MAP under the prior N(0, prior_std^2 I), and the output logit is beta w_hat_k.x_k (0 at
    position 0). The objective is (1/prior_std^2)-strongly convex; damped Newton from w = 0 (one
    batched D x D solve per sequence and prefix, Armijo step halving) runs until every gradient norm
    is below 1e-10 (float64; 1e-5 or the float32 rounding floor otherwise) or max_iterations.
    """

    name = "LogisticRegression"

    def __init__(self, beta: float, prior_std: float = 1.0, max_iterations: int = 50):
        self.beta = _check_beta(beta)
        self.prior_std = _check_prior_std(prior_std)
        self.max_iterations = _check_count("max_iterations", max_iterations, 1)

    def solve(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        """(w_hat, gradient of the objective at w_hat), each (batch, n_points, n_dims)."""
        xs_c, ys_c = _inputs(xs, ys)
        n_points = xs.shape[1]
        pairs = self.beta * ys_c[..., None] * xs_c
        mask = torch.ones(n_points, n_points, dtype=xs_c.dtype, device=xs.device).tril(-1)
        return _newton_logistic(pairs, mask, self.prior_std, self.max_iterations)

    @torch.no_grad()
    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Logits (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        w, _ = self.solve(xs, ys)
        return (self.beta * (w * xs.to(w.dtype)).sum(-1)).to(xs.dtype)

    __call__ = predict


class GaussianBayesClassifier:
    """Posterior predictive under the prior w ~ N(0, prior_std^2 I), by Monte Carlo:
    p_k = E[sigmoid(z_k(w)) | S_k] with posterior density proportional to N(w; 0, prior_std^2 I)
    exp(l_k(w)). Position 0 is exactly the prior's prediction, logit 0 (error 0), by symmetry.

    method "snis" (the default "auto" for beta <= SNIS_MAX_BETA): self-normalised importance
    sampling over n_draws prior draws w_s shared by every sequence and prefix of the chunk,
        p_k ~= sum_s e^{l_k(w_s)} sigmoid(z_k(w_s)) / sum_s e^{l_k(w_s)},
    whose weights are likelihoods (at most 1, so bounded); delta-method standard error
    sqrt(sum_s pi_s^2 (sigmoid(z_k(w_s)) - p_k)^2), pi the normalised weights. The logit is
    log sum_s pi_s sigmoid(z_k) - log sum_s pi_s sigmoid(-z_k).

    method "ess" ("auto" for beta > SNIS_MAX_BETA, where the importance weights degenerate):
    elliptical slice sampling (Murray, Adams & MacKay 2010) with the prior N(0, prior_std^2 I),
    one chain per (sequence, prefix), all vectorised; each chain starts at its MAP (the
    LogisticRegression solution), discards burn_in iterations, and the output is Rao-Blackwellised:
    p_k ~= mean over the n_iterations later states of sigmoid(z_k(w_t)) (logit from the running
    logsumexp of logsigmoid(+-z_k)). Standard error by batch means over N_BATCHES batches.

    The draws are keyed by content_key(xs, ys) (stream CLASSIFICATION_STREAM), so a repeated call
    gives identical output and another chunk draws anew.

    Defaults, measured at D = 8, K = 16 on 4096 sequences, one core, float32:
    beta = 1 (SNIS, 2^13 draws): RMS standard error of the probability 0.013 (delta method, shown
    honest against quadrature at D = 2), about 23 s.
    beta = 16 (ESS, 80 iterations after 8 of burn-in, from the MAP): about 22 s (~5 s of it the
    MAP starts), reported RMS error 0.087, but the real error is larger: at 160 iterations it was
    0.12 against a 2560-iteration run on 64 sequences (reported 0.08). The chains mix slowly there (integrated
    autocorrelation ~20 iterations: the posterior is nearly a prior truncated to a narrow cone),
    so at this cost ESS is no better than SNIS with 2^16 draws (0.065); batch means with batches
    shorter than the autocorrelation time understate the error at large beta.
    beta = 4, D = 4 (the classification-tiny preset, SNIS): RMS error 0.011 (reported 0.012), 16 s
    per 4096 sequences; ESS at its defaults had 0.073 there (reported 0.058).
    """

    name = "GaussianBayes"

    def __init__(
        self,
        beta: float,
        prior_std: float = 1.0,
        n_draws: int = DEFAULT_DRAWS,
        n_iterations: int = DEFAULT_ITERATIONS,
        burn_in: int = DEFAULT_BURN_IN,
        method: str = "auto",
    ):
        self.beta = _check_beta(beta)
        self.prior_std = _check_prior_std(prior_std)
        self.n_draws = _check_count("n_draws", n_draws, 1)
        self.n_iterations = _check_count("n_iterations", n_iterations, N_BATCHES)
        self.burn_in = _check_count("burn_in", burn_in, 0)
        if method not in ("auto", "snis", "ess"):
            raise ValueError(f"method must be 'auto', 'snis' or 'ess', got {method!r}")
        if method == "auto":
            method = "snis" if self.beta <= SNIS_MAX_BETA else "ess"
        self.method = method

    @torch.no_grad()
    def predict_with_error(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, standard errors of the probability), each (batch, n_points), in xs's dtype."""
        xs_c, ys_c = _inputs(xs, ys)
        generator = make_generator("cpu", CLASSIFICATION_STREAM, content_key(xs, ys))
        if self.method == "snis":
            logits, errors = self._snis(xs_c, ys_c, generator)
        else:
            logits, errors = self._ess(xs_c, ys_c, generator)
        logits[:, 0] = 0.0
        errors[:, 0] = 0.0
        return logits.to(xs.dtype), errors.to(xs.dtype)

    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Logits (batch, n_points) from xs (batch, n_points, n_dims), ys (batch, n_points)."""
        return self.predict_with_error(xs, ys)[0]

    __call__ = predict

    def _snis(self, xs: Tensor, ys: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch, n_points, n_dims = xs.shape
        draws = torch.randn(self.n_draws, n_dims, generator=generator, dtype=torch.float64)
        draws = (draws * (self.prior_std * self.beta)).to(xs.device, xs.dtype)
        negative = (ys < 0).to(xs.dtype)[..., None]
        flat = xs.reshape(batch * n_points, n_dims)
        size = max(1, BLOCK_ELEMENTS // max(1, batch * n_points))
        shape = (batch, n_points)
        top = xs.new_full(shape, -math.inf)  # running max of the log-weights
        # Sums scaled by e^-top: weights, weights x sigmoid(+-z), squared weights x (1, f, f^2).
        sums = xs.new_zeros(6, *shape)
        for start in range(0, self.n_draws, size):
            z = (flat @ draws[start : start + size].T).view(batch, n_points, -1)
            log_sig = F.logsigmoid(z)
            log_weight = _exclusive_cumsum(log_sig - z * negative)
            new_top = torch.maximum(top, log_weight.amax(-1))
            factor = torch.exp(top - new_top)  # 0 at the first block (top = -inf)
            sums[:3] *= factor
            sums[3:] *= factor.square_()
            top = new_top
            weight = torch.exp(log_weight - top[..., None])
            positive = torch.exp(log_sig)
            sums[0] += weight.sum(-1)
            sums[1] += (weight * positive).sum(-1)
            sums[2] += (weight * torch.exp(log_sig - z)).sum(-1)
            weight.square_()
            sums[3] += weight.sum(-1)
            weight *= positive
            sums[4] += weight.sum(-1)
            sums[5] += (weight * positive).sum(-1)
        total = sums[0]
        p = sums[1] / total
        variance = (sums[5] - 2 * p * sums[4] + p.square() * sums[3]) / total.square()
        logits = sums[1].log() - sums[2].log()
        return logits, variance.clamp_(min=0).sqrt()

    def _ess(self, xs: Tensor, ys: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch, n_points, n_dims = xs.shape
        dtype, device = xs.dtype, xs.device
        if n_points < 2:
            return xs.new_zeros(batch, n_points), xs.new_zeros(batch, n_points)
        n_pairs = n_points - 1
        pairs = self.beta * ys[:, :n_pairs, None] * xs[:, :n_pairs]  # (batch, J, D)
        # Chain (b, c) targets the posterior after the first c + 1 pairs, predicting x_{c+1}.
        mask = torch.ones(n_pairs, n_pairs, dtype=dtype, device=device).tril()
        start, _ = _newton_logistic(pairs, mask, self.prior_std, 50)
        n_chains = batch * n_pairs
        state = start.reshape(n_chains, n_dims).clone()
        sequence = torch.arange(batch, device=device).repeat_interleave(n_pairs)
        chain_mask = mask.repeat(batch, 1)  # (n_chains, J)
        targets = self.beta * xs[:, 1:].reshape(n_chains, n_dims)

        def log_likelihood(w: Tensor, chains: Tensor) -> Tensor:
            margins = (pairs.index_select(0, sequence[chains]) @ w[:, :, None])[..., 0]
            return (F.logsigmoid(margins) * chain_mask[chains]).sum(-1)

        def uniform(n: int) -> Tensor:
            return torch.rand(n, generator=generator, dtype=torch.float64).to(device, dtype)

        every = torch.arange(n_chains, device=device)
        log_lik = log_likelihood(state, every)
        log_pos = xs.new_full((n_chains,), -math.inf)
        log_neg = xs.new_full((n_chains,), -math.inf)
        batch_sums = xs.new_zeros(N_BATCHES, n_chains)
        batch_counts = [0] * N_BATCHES
        for iteration in range(self.burn_in + self.n_iterations):
            nu = torch.randn(n_chains, n_dims, generator=generator, dtype=torch.float64)
            nu = (nu * self.prior_std).to(device, dtype)
            threshold = log_lik + torch.log(uniform(n_chains))
            angle = uniform(n_chains) * (2 * math.pi)
            low, high = angle - 2 * math.pi, angle.clone()
            active = every
            for _ in range(MAX_SHRINKS):
                theta = angle[active]
                proposal = (
                    state[active] * torch.cos(theta)[:, None]
                    + nu[active] * torch.sin(theta)[:, None]
                )
                proposal_lik = log_likelihood(proposal, active)
                accept = proposal_lik > threshold[active]
                taken = active[accept]
                state[taken] = proposal[accept]
                log_lik[taken] = proposal_lik[accept]
                active, theta = active[~accept], theta[~accept]
                if active.numel() == 0:
                    break
                below = theta < 0
                low[active] = torch.where(below, theta, low[active])
                high[active] = torch.where(below, high[active], theta)
                angle[active] = low[active] + (high[active] - low[active]) * uniform(len(active))
            # Chains still active after MAX_SHRINKS keep their state (a valid, lazier kernel).
            if iteration < self.burn_in:
                continue
            z = (state * targets).sum(-1)
            log_sig = F.logsigmoid(z)
            log_pos = torch.logaddexp(log_pos, log_sig)
            log_neg = torch.logaddexp(log_neg, log_sig - z)
            slot = (iteration - self.burn_in) * N_BATCHES // self.n_iterations
            batch_sums[slot] += torch.exp(log_sig)
            batch_counts[slot] += 1
        counts = torch.tensor(batch_counts, dtype=dtype, device=device)[:, None]
        means = batch_sums / counts
        errors = means.var(0).div(N_BATCHES).sqrt()
        logits = xs.new_zeros(batch, n_points)
        logits[:, 1:] = (log_pos - log_neg).view(batch, n_pairs)
        full_errors = xs.new_zeros(batch, n_points)
        full_errors[:, 1:] = errors.view(batch, n_pairs)
        return logits, full_errors
