"""What a run prints about its loss: moving averages beside the chance level, the end-of-run summary line, and the
demo's settings (those of the 3-seed study) and reading line."""

from __future__ import annotations

import io
from types import SimpleNamespace

from lvmmed_ext.data.demo import DEMO
from lvmmed_ext.eval.demo import READING
from lvmmed_ext.heads import build_head
from lvmmed_ext.train.ablate import BUDGETS
from lvmmed_ext.train.cli import run_summary
from lvmmed_ext.train.progress import ProgressBar


def test_progress_bar_shows_moving_averages_beside_chance():
    out = io.StringIO()
    bar = ProgressBar(20, stream=out, chance_loss=30.0, chance_match=1 / 16)
    for step in range(1, 21):
        bar.update(step, loss=float(step), images_per_s=10.0, lr=1e-3, match=0.5 if step > 10 else 0.0)
    assert bar.tail_steps == 2 and bar.loss_avg == 19.5 and bar.match_avg == 0.5  # the last tenth of 20 steps
    last = out.getvalue().strip().splitlines()[-1]
    assert "loss 19.5000 (chance 30)" in last and "match 0.50 (chance 0.06)" in last


def test_run_summary_states_the_chance_levels():
    result = SimpleNamespace(final_loss=20.0, loss_avg=19.92, match_avg=0.389, chance_loss=30.0, chance_match=0.0625,
                             tail_steps=50)  # fmt: skip
    assert run_summary(result) == (
        "loss 19.9200 (mean of the last 50 steps; a random matching scores 30), noise-free matching accuracy 0.39 "
        "(chance 0.06)"
    )
    bare = SimpleNamespace(final_loss=2.5, loss_avg=None, match_avg=None, chance_loss=None, chance_match=None,
                           tail_steps=0)  # fmt: skip
    assert run_summary(bare) == "final loss 2.5000"


def test_gm_chance_loss_is_a_random_matching():
    head = build_head("gm", 32, graph_size=8)
    assert head.chance_loss() == 14.0  # one fixed point on average: 2 (N - 1) mismatched entries
    assert build_head("vicreg", 32, hidden_dim=8, out_dim=8).chance_loss() is None


def test_demo_runs_the_settings_of_the_study():
    assert {k: DEMO[k] for k in ("width", "steps")} == {k: BUDGETS["medium"][k] for k in ("width", "steps")}
    assert "One seed is an anecdote" in READING and "docs/STUDY.md" in READING
