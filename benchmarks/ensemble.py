"""Stacked ensemble vs the same runs one after another: aggregate model-steps per second.

N = 8 runs of the `tiny` preset (different seeds and task pools) trained for the same steps, once
as one stacked ensemble (iclab.training.steps) and once one run after another, in this
process with the same torch threads. Rates are timed between the first and the last progress
report, so model building, optimizer set-up and the first steps (warm-up) are left out of both.
Target on a CPU: ratio >= 0.9 (the stack does the same arithmetic; it must not cost more). On a GPU
the stack turns N kernel launches per operation into one, which is where it pays.
"""

import time

from iclab.config import load_config
from iclab.training import train, train_runs

N_MEMBERS = 8
TARGET_RATIO = 0.9


def _configs(n_members: int, steps: int) -> list:
    return [
        load_config(
            "tiny",
            [f"seed={i}", f"n_tasks={2**i}", f"steps={steps}", "log_every=10", 'device="cpu"'],
        )
        for i in range(n_members)
    ]


class _Clock:
    """on_log callback: the times of the first and the last progress report."""

    def __init__(self):
        self.first = self.last = None

    def __call__(self, done: int, _loss: float) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (done, now)
        self.last = (done, now)

    def steps_per_second(self) -> float:
        (d0, t0), (d1, t1) = self.first, self.last
        return (d1 - d0) / (t1 - t0)


def run(quick: bool) -> list[dict]:
    n_members, steps = (4, 30) if quick else (N_MEMBERS, 120)
    configs = _configs(n_members, steps)
    stacked_clock = _Clock()
    train_runs(configs, progress=False, on_log=stacked_clock)
    stacked = n_members * stacked_clock.steps_per_second()
    rates = []
    for config in configs:
        clock = _Clock()
        train(config, progress=False, on_log=clock)
        rates.append(clock.steps_per_second())
    sequential = n_members / sum(1 / rate for rate in rates)  # model-steps/s one after another
    ratio = stacked / sequential
    return [
        {
            "benchmark": "ensemble",
            "case": f"{n_members} x tiny, {steps} steps, batch {configs[0].train.batch_size}",
            "stacked model-steps/s": stacked,
            "sequential model-steps/s": sequential,
            "ratio stacked/sequential": ratio,
            "target": f">= {TARGET_RATIO}",
            "meets target": ratio >= TARGET_RATIO,
        }
    ]
