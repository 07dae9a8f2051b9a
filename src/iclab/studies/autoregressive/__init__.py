"""In-context autoregressive learning (Sander et al. 2024): what trained models compute.

gd_fit compares predictions with one-step GD up to its conjugation symmetry, weights reads the
trained weights (linear and diagonal models), analysis runs both on a run directory, figures draws
them; reproduction reproduces the paper's claims (runs, parts, report) as a Markdown report.
"""
