"""The Markdown report of the reproduction: OUT/report.md, linking the figures, a table of checks."""

from pathlib import Path

from iclab.files import atomic_write_text
from iclab.studies.autoregressive.parts import SMALL_INIT, Check

REPORT_FILE = "report.md"


def _table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return (f"{value:.4g}" if isinstance(value, float) else str(value)).replace("|", "\\|")

    cells = [[cell(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def write_report(
    out: Path, numbers: dict, checks: list[Check], seconds: float, threads: int, note: str = ""
) -> Path:
    """OUT/report.md from the parts' numbers and checks (note: a paragraph under the title);
    returns its path."""
    linear, theory, diagonal, pe = (numbers[k] for k in ("linear", "theory", "diagonal", "pe_only"))
    lines = [
        "# In-context autoregressive learning (Sander et al. 2024): reproduction",
        "",
        *([note, ""] if note else []),
        f"Wall time {seconds:.0f} s with {threads} torch thread(s). Run directories are in "
        "`runs/`; every number is in `report.json`. Losses are mean squared errors per coordinate "
        "on held-out sequences (|.|^2 for complex states); unless said otherwise they average all "
        "positions t = 0..T-1 like the training loss (position 0 has seen no pair; every predictor "
        "here outputs about 0 there).",
        "",
        "## Checks",
        "",
        _table(
            ["claim", "holds", "numbers"],
            [[c.name, "yes" if c.holds else "**no**", c.numbers] for c in checks],
        ),
        "",
    ]
    lines += _linear_section(linear)
    exact = theory["exact"]
    lines += [
        "## (b) Closed form of the diagonal model and its minimisers",
        "",
        "Closed form against the exact average over a grid of angles (random A, B, P): "
        + ", ".join(
            f"{f}: max relative difference {v['max_relative_difference']:.1e}"
            for f, v in exact.items()
        )
        + f". Minimisers (start (1, ..., 1), d = {theory['n_dims']}, T = {theory['n_steps']}, "
        "Adam then L-BFGS on the closed form from N(0, init^2)):",
        "",
        _table(
            [
                "case",
                "init",
                "loss",
                "c",
                "|C - cI|/|C|",
                "rank",
                "p_prev/p_last",
                "c p_last",
                "max |cos| heads",
            ],
            [
                [
                    k,
                    v["init_std"],
                    v["loss"],
                    v["c"],
                    v["identity_gap"],
                    v["rank"],
                    v["ratio"],
                    v["c_p_last"],
                    v["max_abs_cos"],
                ]
                for k, v in theory["minimisers"].items()
            ],
        ),  # fmt: skip
        "",
        "## (c) The diagonal model trained on sampled sequences",
        "",
        "Start s_0 = (1, ..., 1)/sqrt(d) (the task's), so the closed form is evaluated with that "
        "start; losses over positions t = 1..T-1 (the model outputs 0 at t = 0). `exact loss` is "
        "the closed-form expected loss of the trained weights, `sampled` the loss on held-out "
        "sequences. `closed-form min` and the minimiser's B^T A come from the closed-form "
        "minimiser for the same head count from N(0, 0.01^2); the minimiser's head cosines from "
        "the same initialisation as the training run. "
        "Head cosines: each head as the vector (a_h, b_h).",
        "",
        _table(
            [
                "run",
                "closed-form min",
                "exact loss",
                "sampled loss",
                "zero loss",
                "B^T A (trained)",
                "B^T A (minimiser)",
                "max |cos| trained",
                "max |cos| minimiser",
            ],
            [
                [
                    r["run"],
                    r["closed_form_minimum"],
                    r["closed_form_loss_trained"],
                    r["sampled_loss_trained"],
                    r["zero_loss"],
                    r["structure_trained"],
                    r["structure_minimiser"],
                    r["max_abs_cos_trained"],
                    r["max_abs_cos_minimiser"],
                ]
                for r in diagonal
            ],
        ),  # fmt: skip
        "",
        _orthogonality_note(diagonal, theory),
        "",
        "![head cosines](head_cosines.png)",
        "",
    ]
    for r in diagonal:
        lines += [
            f"**{r['run']}**: A, B, B^T A, P trained (top) and closed-form minimiser (bottom).",
            "",
            f"![parameters](runs/{r['run']}/diagonal_params.png)",
            "",
        ]
    lines += [
        "## (d) Positional-encoding-only attention, scalar unitary sequences",
        "",
        _table(
            [
                "run",
                "loss",
                "loss t >= 1",
                "zero loss",
                "sign changes of last row",
                "R^2 of a line fit",
            ],
            [
                [
                    r["run"],
                    r["loss_model"],
                    r["loss_from_position_1"],
                    r["loss_zero"],
                    r["sign_changes"],
                    r["linear_r2"],
                ]
                for r in pe
            ],
        ),  # fmt: skip
        "",
        _pe_note(pe),
        "",
        "![last rows](pe_last_row.png)",
        "",
    ]
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(lines))
    return path


def _linear_section(linear: list[dict]) -> list[str]:
    lines = [
        "## (a) One-layer linear attention, augmented tokens, against one-step GD",
        "",
        "eta* is the optimal single step size of one-step GD (closed form for unitary W with the "
        "fixed start, else the empirical minimiser). gap = |p - eta* u| / |eta* u| on held-out "
        "sequences. The symmetry (iclab.studies.autoregressive.gd_fit): eta D W_hat D^* s_t with "
        "D commuting with every W (diagonal phases for unitary, a 2x2 rotation per block for "
        "rotations) and, for rotations, eta D W_hat^T D^T s_t with D a 2x2 reflection per block "
        "(reversed pairs) have the same expected loss as one-step GD (D = I) but other "
        "predictions, and a one-layer "
        "model expresses each with the same weights; `gap sym` uses the best such D. `GD block`: "
        "share of the weight tensor T on the block that (symmetric) one-step GD uses; `weight "
        "gap` = |T - eta S_D| / |T|; F' = D^* F, G' = G D: the model's value and score maps on that "
        "block in D's frame, normalised to mean diagonal 1 (one-step GD: identities), with the "
        "rms of their off-diagonal entries and the share of it on one rank-one pattern c w w^* "
        "(|w_j| = 1).",
        "",
        _table(
            ["run", "model loss", "GD(eta*) loss", "model - GD (2 SE)", "zero loss", "eta fit",
             "eta*", "eta sym", "gap plain", "gap sym", "GD block", "weight gap",
             "F' off-diag rms (rank-1 share)", "G' off-diag rms (rank-1 share)"],
            [
                [r["run"], r["loss"]["model"], r["loss"]["one_step_gd_optimal_eta"],
                 f"{100 * r['model_minus_gd']['relative']:+.2f}% "
                 f"({200 * r['model_minus_gd']['relative_se']:.2f}%)",
                 r["loss"]["zero"], r["eta_fit"], r["eta_optimal"], r["eta_sym"], r["gap_plain"],
                 r["gap_sym"], f"{r['weights']['gd_block']}: {r['weights']['gd_block_fraction']:.4f}",
                 r["weights"]["weight_gap"], _offdiagonal(r["weights"]["frame"], "F"),
                 _offdiagonal(r["weights"]["frame"], "G")]
                for r in linear
            ],
        ),
        "",
    ]  # fmt: skip
    for r in linear:
        run_dir = f"runs/{r['run']}"
        others = sorted(r["weights"]["block_fractions"].items(), key=lambda item: -item[1])[1:3]
        lines += [
            f"**{r['run']}** ({r['symmetry']}): the weight tensor puts "
            f"{r['weights']['gd_block_fraction']:.1%} on the block {r['weights']['gd_block']}, next "
            + ", ".join(f"{share:.1%} on {name}" for name, share in others)
            + f". Up to the symmetry the predictions are {r['gap_sym']:.1%} from one-step GD at "
            f"eta* and the fitted eta is {r['eta_sym_ratio']:.3f} eta*; the loss is "
            f"{100 * r['model_minus_gd']['relative']:+.2f}% of one-step GD's. Figures: training "
            "loss against the estimators, effective eta per position against the optimal eta, "
            "learned value maps |F| and score maps |G|, and |F' - I|, |G' - I| in D's frame.",
            "",
            f"![training]({run_dir}/training.png) ![eta]({run_dir}/eta_per_position.png)",
            "",
            f"![weights]({run_dir}/linear_weights.png)",
            "",
        ]
    return lines


def _offdiagonal(frame: dict, name: str) -> str:
    return f"{frame[f'offdiag_rms_{name}']:.4f} ({frame[f'offdiag_rank1_share_{name}']:.2f})"


def _orthogonality_note(diagonal: list[dict], theory: dict) -> str:
    parts = [
        f"{r['run']}: trained {r['max_abs_cos_trained']:.3f}, closed-form minimiser from init "
        f"{r['minimiser_init_std']:g} {r['max_abs_cos_minimiser']:.3f}"
        for r in diagonal
    ]
    text = "Max |cos| between heads (orthogonal here: < 0.05): " + "; ".join(parts) + "."
    large = theory["minimisers"].get("unitary H=d, init 1.0")
    if large is not None:
        text += f" Part (b), closed-form minimiser from init 1.0: {large['max_abs_cos']:.3f}."
    for small in (True, False):
        runs = [r for r in diagonal if (r["init_std"] <= SMALL_INIT) == small]
        if runs:
            orthogonal = [r["max_abs_cos_trained"] < 0.05 for r in runs]
            verdict = "all" if all(orthogonal) else "some" if any(orthogonal) else "none"
            scale = "small (<= 0.1)" if small else "large (> 0.1)"
            text += f" Trained from a {scale} initialisation: {verdict} orthogonal."
    return text + (
        " The loss is unchanged by A -> M A, B -> M^-T B (C = B^T A is kept), so orthogonal heads "
        "are not a property of the minima but of where a small initialisation leads: gradient "
        "flow conserves A A^T - B B^T, which starts near 0."
    )


def _pe_note(pe: list[dict]) -> str:
    parts = [
        f"mu = {r['mu']:g}: sign changes {r['sign_changes']}, line-fit R^2 {r['linear_r2']:.3f}"
        for r in pe
    ]
    return (
        "What the figure shows (numbers: " + "; ".join(parts) + "). The last row weights key "
        "t' by s_{T-2}^* s_t' s_t' = e^{i (2t' - T + 2) theta}; the prediction must match "
        "e^{i T theta} for theta in [0, 2 pi / mu). For large mu that arc is short and a smooth, "
        "nearly linear profile suffices; for small mu the profile must oscillate."
    )
