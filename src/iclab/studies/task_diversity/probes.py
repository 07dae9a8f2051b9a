"""Inside a trained regression GPT: linear probes of its residual stream and its mean attention.

Probes. At the x token of every position k (where the model reads its prediction of y_k, having
seen k pairs) and after every layer (0: the embedding), a ridge-regularised linear map from the
residual stream is fitted on half of the sequences and scored by R^2 on the other half for each
target of PROBE_TARGETS: the sequence's task vector w; the ridge estimate w_ridge of the prefix
(the run's prior); the dMMSE estimate w_dMMSE of the prefix (its pool); their difference, the part
that tells the two apart; and the PT's own prediction. R^2 = 1 - SSE / SST over the target's
coordinates; it is undefined (None) where the target does not vary: the estimates at k = 0, and
w_dMMSE - w_ridge at M = infinity, where the pool's posterior mean is ridge's (Gaussian prior).

Attention. Per layer and head, the attention weights of the x tokens (queries) over all tokens,
averaged over sequences, and how much of it falls on earlier y tokens (the labels) against x
tokens.
"""

import math

import torch

from iclab.estimators.pool_posterior import DMMSE
from iclab.estimators.regression import Ridge
from iclab.plots import plt, save_figure
from iclab.seeding import make_generator

PROBE_TARGETS = ("w", "w_ridge", "w_dMMSE", "w_dMMSE - w_ridge", "prediction")
PROBE_RIDGE = 1e-3  # times the mean feature variance
PROBE_STREAM = 8  # the probes' sequences (see seeding's stream list)
CONSTANT = 1e-12  # relative target variance below which R^2 is undefined


def probe_r2(features: torch.Tensor, targets: torch.Tensor, ridge: float = PROBE_RIDGE):
    """Held-out R^2 of a ridge-regularised linear probe from features (n, width) to targets
    (n, t): fitted on the first half of the rows, scored on the second; None if the targets do
    not vary."""
    features, targets = features.double(), targets.double().reshape(len(targets), -1)
    half = len(features) // 2
    x_train, x_test = features[:half], features[half:]
    y_train, y_test = targets[:half], targets[half:]
    x_mean, y_mean = x_train.mean(0), y_train.mean(0)
    x_train, x_test = x_train - x_mean, x_test - x_mean
    total = (y_test - y_mean).square().sum()
    if total <= CONSTANT * (1 + y_mean.square().sum()) * len(y_test):
        return None
    gram = x_train.T @ x_train
    alpha = ridge * float(gram.diagonal().mean()) + 1e-12
    weights = torch.linalg.solve(
        gram + alpha * torch.eye(len(gram), dtype=gram.dtype, device=gram.device),
        x_train.T @ (y_train - y_mean),
    )
    residual = y_test - y_mean - x_test @ weights
    return float(1 - residual.square().sum() / total)


@torch.inference_mode()
def probe_study(model, task, n_sequences: int, seed: int) -> dict:
    """Per distribution: R^2 per target as a (n_layers + 1) x n_points table (lists, None where
    undefined), and the attention summary."""
    config = task.config
    result = {}
    for index, distribution in enumerate(("true", "pretrain")):
        if distribution == "pretrain" and task.pool is None:
            continue
        generator = make_generator(task.device, seed, PROBE_STREAM, index)
        xs, ys, ws = task.sample(generator, n_sequences, distribution)
        predictions, hidden = model(xs, ys, return_hidden=True)
        w_ridge = Ridge(config.noise_std, config.prior_std).posterior_means(xs, ys)
        w_dmmse = (
            w_ridge
            if task.pool is None
            else DMMSE(task.pool, config.noise_std).posterior_means(xs, ys)
        )
        n_points = xs.shape[1]
        targets = {  # (batch, K, coordinates) per target
            "w": ws[:, None].expand(-1, n_points, -1),
            "w_ridge": w_ridge,
            "w_dMMSE": w_dmmse,
            "w_dMMSE - w_ridge": w_dmmse - w_ridge,
            "prediction": predictions[..., None],
        }
        residual = hidden.residual[:, :, ::2]  # the x tokens: (layers + 1, batch, K, width)
        result[distribution] = {
            "r2": {
                name: [
                    [probe_r2(residual[layer, :, k], target[:, k]) for k in range(n_points)]
                    for layer in range(len(residual))
                ]
                for name, target in targets.items()
            },
            "attention": attention_summary(hidden.attention),
        }
    return result


def attention_summary(attention: torch.Tensor) -> dict:
    """attention (n_layers, batch, heads, 2K, 2K) -> the mean weights of the x-token queries
    (n_layers, heads, K, 2K) and per layer and head the mean share on y tokens (labels)."""
    mean = attention[:, :, :, ::2].double().mean(1)  # queries at x tokens
    on_labels = mean[..., 1::2].sum(-1)[..., 1:].mean(-1)  # x_k's share on y_0..y_{k-1}; k >= 1
    return {"mean": mean.tolist(), "share_on_labels": on_labels.tolist()}


def plot_probes(result: dict, path, distribution: str = "true"):
    """One heatmap of held-out R^2 per target: layer against position."""
    r2 = result[distribution]["r2"]
    figure, axes = plt.subplots(1, len(r2), figsize=(3.2 * len(r2), 3.2), squeeze=False)
    for axis, (name, table) in zip(axes[0], r2.items(), strict=True):
        values = [[math.nan if v is None else v for v in row] for row in table]
        image = axis.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        defined = any(v is not None for row in table for v in row)
        axis.set_title(name if defined else f"{name}: undefined", fontsize="medium")
        axis.set_xlabel("context position k")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.yaxis.get_major_locator().set_params(integer=True)
    axes[0, 0].set_ylabel("layer (0 = embedding)")
    figure.colorbar(image, ax=axes[0].tolist(), label="held-out $R^2$")
    figure.suptitle(f"linear probes of the residual stream ({distribution} distribution)", y=1.08)
    return save_figure(figure, path, pdf=False)


def plot_attention(result: dict, path, distribution: str = "true"):
    """Mean attention of the x tokens over all tokens, one panel per layer and head."""
    mean = result[distribution]["attention"]["mean"]
    layers, heads = len(mean), len(mean[0])
    figure, axes = plt.subplots(
        layers, heads, figsize=(2.6 * heads, 2.3 * layers), squeeze=False, sharex=True, sharey=True
    )
    shares = result[distribution]["attention"]["share_on_labels"]
    for layer in range(layers):
        for head in range(heads):
            axis = axes[layer, head]
            axis.imshow(mean[layer][head], cmap="magma", aspect="auto", origin="lower", vmin=0)
            axis.set_title(
                f"layer {layer + 1}, head {head + 1}: {shares[layer][head]:.0%} on y",
                fontsize="small",
            )
    for axis in axes[-1]:
        axis.set_xlabel("key token (even: x, odd: y)")
    for axis in axes[:, 0]:
        axis.set_ylabel("query x_k, position k")
    figure.tight_layout()
    return save_figure(figure, path, pdf=False)
