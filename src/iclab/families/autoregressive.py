"""Linear autoregressive sequences in context (Sander et al. 2024): s_{t+1} = W s_t + noise.

One evaluation distribution (`true`: a fresh W per sequence). Predictors are called as
predict(inputs, ws) with inputs = s_0..s_{T-1}; output t predicts s_{t+1}. Baselines: the oracle
(the true W), least squares, one-step GD at the optimal step size, and the family's exact shortcut
(LastPair for unitary W, CosineRecurrence for rotations). Errors are |.|^2 per coordinate / d.
"""

from dataclasses import dataclass

from iclab.families import (
    ACTIVATIONS,
    EVALUATION,
    FLOAT,
    MODEL_NAME,
    PARAMETER_COPIES,
    PARAMETERS,
    POOL,
    Family,
    register,
)
from iclab.validation import require

ORACLE = "Oracle"
W_FAMILIES = ("unitary", "rotations", "orthogonal")


@dataclass(frozen=True)
class AutoregressiveTaskConfig:
    """Linear autoregressive sequences s_{t+1} = W s_t + noise_std * eps_t (Sander et al. 2024).

    A sequence holds n_steps + 1 states s_0..s_T of dimension n_dims. Angles theta ~ U[0, 2 pi / mu).
    w_family: `unitary` (complex diagonal e^{i theta}), `rotations` (commuting 2x2 rotation blocks on
    coordinates (2i, 2i+1), in the canonical basis or a random basis shared by the task, drawn from
    basis_seed), `orthogonal` (Haar-random). start: `fixed` (the reference code's unit vector) or
    `random` (uniform on the sphere).
    """

    family: str = "autoregressive"
    n_dims: int = 5
    n_steps: int = 50
    w_family: str = "unitary"
    mu: float = 1.0
    rotation_basis: str = "canonical"
    start: str = "fixed"
    noise_std: float = 0.0
    basis_seed: int = 0

    def __post_init__(self):
        require(self.n_dims >= 1, "task.n_dims", self.n_dims, "an integer >= 1")
        require(
            self.n_steps >= 2,
            "task.n_steps",
            self.n_steps,
            "an integer >= 2 (a transition to learn W from before a prediction)",
        )
        require(self.w_family in W_FAMILIES, "task.w_family", self.w_family, f"one of {W_FAMILIES}")
        require(self.mu >= 1, "task.mu", self.mu, "a number >= 1")
        require(
            self.rotation_basis in ("canonical", "random"),
            "task.rotation_basis",
            self.rotation_basis,
            "one of ('canonical', 'random')",
        )
        require(
            self.start in ("fixed", "random"),
            "task.start",
            self.start,
            "one of ('fixed', 'random')",
        )
        require(self.noise_std >= 0, "task.noise_std", self.noise_std, "a number >= 0")
        require(self.basis_seed >= 0, "task.basis_seed", self.basis_seed, "an integer >= 0")
        if self.w_family == "rotations":
            require(
                self.n_dims % 2 == 0, "task.n_dims", self.n_dims, "an even integer for rotations"
            )
        if self.w_family == "orthogonal":  # Haar W has no angle distribution to scale
            require(self.mu == 1, "task.mu", self.mu, "1 for w_family = 'orthogonal' (Haar W)")
        if self.w_family != "rotations":
            require(
                self.rotation_basis == "canonical",
                "task.rotation_basis",
                self.rotation_basis,
                "'canonical' unless w_family = 'rotations'",
            )


class Autoregressive(Family):
    name = "autoregressive"
    config_class = AutoregressiveTaskConfig
    model_families = ("linear_attention", "diagonal_attention")
    distributions = ("true",)
    distribution_titles = {"true": "true distribution (a fresh W per sequence)"}
    status_metrics = (("true", "PT,OneStepGD"), ("true", "PT,LeastSquares"))

    def bayes(self, config) -> dict[str, str]:
        return {"true": ORACLE}

    def make_task(self, config, device):
        from iclab.tasks.autoregressive import AutoregressiveTask

        return AutoregressiveTask(config, device)

    def baselines(self, task) -> dict:
        from iclab.estimators.autoregressive import (
            CosineRecurrence,
            LastPair,
            LeastSquares,
            OneStepGD,
            Oracle,
            optimal_eta,
        )

        baselines = {
            ORACLE: Oracle(),
            "LeastSquares": LeastSquares(),
            "OneStepGD": OneStepGD(optimal_eta(task.config).overall),
        }
        if task.config.w_family == "unitary":
            baselines["LastPair"] = LastPair()
        if task.config.w_family == "rotations":
            baselines["CosineRecurrence"] = CosineRecurrence(task.basis)
        return baselines

    def metric_pairs(self, baselines: dict) -> tuple[tuple[str, str], ...]:
        return tuple((MODEL_NAME, name) for name in baselines if name != ORACLE)

    def model_predictor(self, model):
        def pretrained(inputs, ws):
            prediction = model(inputs)
            return prediction if prediction.is_complex() else prediction.float()

        return pretrained

    def evaluation_extras(self, task) -> dict:
        from iclab.estimators.autoregressive import optimal_eta

        eta = optimal_eta(task.config)
        return {"one_step_gd_eta": {"overall": eta.overall, "method": eta.method}}

    def settings(self, config) -> dict:
        return {"w_family": config.w_family, "n_dims": config.n_dims, "n_steps": config.n_steps}

    def memory(self, config, s: dict[str, int], threads: int) -> dict[str, int]:
        """Bytes per part (iclab.training.memory) of the attention models on these sequences
        (values of the state type): linear attention (N + 1) layers of 8 B L E + 4 B H L^2
        (pe_only one layer of 4 B L^2 + 4 B L D); the diagonal model 2 x (3 B H L^2 + 2 B L^2 D)
        (its einsum keeps a (B, L, L, D) intermediate); the sampled batch 3 B (L + 1) D + 2 B D^2;
        an evaluation chunk of C: one layer at C and the float64 baselines' 4 C D^2 + 3 C L^2 +
        4 C L D."""
        from iclab.tasks.autoregressive import is_complex

        d, length, b, chunk = s["task.n_dims"], s["task.n_steps"], s["train.batch_size"], s["chunk"]
        value = 2 * FLOAT if is_complex(config.task) else FLOAT
        h = s.get("model.n_heads", 1)
        model = config.model
        if model.family == "diagonal_attention":
            parameters = 2 * h * d + length * length
            layers = 2
            layer = lambda rows: 3 * rows * h * length**2 + 2 * rows * length**2 * d  # noqa: E731
        elif model.attention == "pe_only":
            parameters, layers = length * length, 1
            layer = lambda rows: 4 * rows * length**2 + 4 * rows * length * d  # noqa: E731
        else:
            needed = (3 if model.tokens == "augmented" else 2) * d
            e = max(s["model.n_embd"], -(-needed // h) * h)
            n = s["model.n_layers"]
            parameters = n * 4 * e * e + (length * e if model.tokens == "plain" else 0)
            layers = n + 1
            layer = lambda rows: 8 * rows * length * e + 4 * rows * h * length**2  # noqa: E731
        batch = lambda rows: 3 * rows * (length + 1) * d + 2 * rows * d * d  # noqa: E731
        baselines = 4 * chunk * d * d + 3 * chunk * length**2 + 4 * chunk * length * d
        return {
            PARAMETERS: PARAMETER_COPIES * value * parameters,
            ACTIVATIONS: value * (layers * layer(b) + batch(b)),
            POOL: 0,
            EVALUATION: value * (layer(chunk) + batch(chunk)) + 4 * value * baselines,
        }


register(Autoregressive())
