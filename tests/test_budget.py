"""Fitting a run to a time budget: event counts, compression of the schedule, the fitted step count."""

import pytest

from retinanet.train.budget import Timing, compress, events_between, fit_schedule, remaining_cost
from retinanet.config import TrainingConfig
from retinanet.train.schedule import WarmupDecay

DEMO = TrainingConfig(steps=500, warmup_steps=50, validate_every=125, checkpoint_every=100, time_budget_minutes=10)


def events_by_loop(done, total, every):
    return sum(1 for step in range(done + 1, total + 1) if step % every == 0 or step == total)


@pytest.mark.parametrize("done, total, every", [(0, 10, 3), (4, 10, 5), (10, 10, 3), (11, 500, 125),
                                                 (11, 237, 59), (0, 1, 1), (3, 7, 1), (0, 100, 100)])
def test_event_count_matches_a_loop_over_the_steps(done, total, every):
    assert events_between(done, total, every) == events_by_loop(done, total, every)


def test_compression_scales_warmup_and_intervals_by_the_same_ratio():
    fitted = compress(DEMO, 200)
    assert (fitted.steps, fitted.warmup_steps, fitted.validate_every, fitted.checkpoint_every) == (200, 20, 50, 40)
    assert fitted.time_budget_minutes == 0  # the saved config is final: a resume does not fit again
    assert fitted.learning_rate == DEMO.learning_rate and fitted.batch_size == DEMO.batch_size
    tiny = compress(DEMO, 3)
    assert (tiny.steps, tiny.warmup_steps, tiny.validate_every, tiny.checkpoint_every) == (3, 0, 1, 1)


def test_fitted_run_is_the_longest_that_ends_within_the_budget():
    timing = Timing(elapsed=90.0, step=2.95, validation=12.0, checkpoint=1.5)
    fitted = fit_schedule(DEMO, 11, timing, 600.0)
    assert 11 < fitted.steps < 500
    # Hand check: ~(600 - 90 - 4 validations - 5 checkpoints) / 2.95 s.
    assert fitted.steps == pytest.approx((600 - 90 - 4 * 12 - 5 * 1.5) / 2.95 + 11, abs=3)
    assert timing.elapsed + remaining_cost(fitted, 11, timing) <= 600
    longer = compress(DEMO, fitted.steps + 1)
    assert timing.elapsed + remaining_cost(longer, 11, timing) > 600


def test_a_fast_machine_keeps_the_configured_run_and_a_spent_budget_still_takes_one_step():
    fast = fit_schedule(DEMO, 11, Timing(elapsed=30.0, step=0.5, validation=5.0, checkpoint=1.0), 600.0)
    assert fast == compress(DEMO, 500) and fast.steps == 500
    spent = fit_schedule(DEMO, 11, Timing(elapsed=700.0, step=0.5, validation=5.0, checkpoint=1.0), 600.0)
    assert spent.steps == 12


def test_a_fitted_schedule_is_the_configured_shape_on_the_shorter_run():
    schedule = WarmupDecay(0.01, total_steps=500, warmup_steps=50, kind="cosine")
    schedule.fit(200, 20)
    fresh = WarmupDecay(0.01, total_steps=200, warmup_steps=20, kind="cosine")
    for step in (0, 10, 19, 20, 100, 150, 199, 200):
        assert float(schedule(step)) == pytest.approx(float(fresh(step)), rel=1e-6, abs=1e-12)
    assert float(schedule(20)) == pytest.approx(0.01)
    assert float(schedule(200)) == pytest.approx(0.0, abs=1e-9)  # decays to zero at the fitted end
    assert schedule.get_config()["total_steps"] == 200
