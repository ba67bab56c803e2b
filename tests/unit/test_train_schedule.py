import random

from export.training.train import TrainConfig, _batches_per_epoch, _schedule, bucketed_batches


def test_bucketed_batches_cover_every_text_once_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(3000)]
    batches = bucketed_batches(lengths, 32, random.Random(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(3000))
    assert len(batches) == _batches_per_epoch(3000, 32)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_padded = sum(32 * max(lengths[i] for i in range(s, min(s + 32, 3000))) for s in range(0, 3000, 32))
    assert padded < 0.6 * random_padded  # bucketing removes most padding


def test_bucketed_batches_are_seeded_and_shuffled():
    lengths = list(range(500))
    a = bucketed_batches(lengths, 10, random.Random(5))
    assert a == bucketed_batches(lengths, 10, random.Random(5))
    assert a != bucketed_batches(lengths, 10, random.Random(6))
    assert a != sorted(a)  # batch order is shuffled, not length order


def test_resumed_schedule_replays_the_remaining_batches_exactly():
    lengths = [i % 17 + 1 for i in range(400)]
    cfg = TrainConfig(batch_size=16, epochs=2.5)
    per_epoch = _batches_per_epoch(len(lengths), cfg.batch_size)
    total = int(per_epoch * cfg.epochs)
    full = list(_schedule(lengths, cfg, per_epoch, total, start=0))
    assert len(full) == total
    assert list(_schedule(lengths, cfg, per_epoch, total, start=37)) == full[37:]
    # a new epoch reshuffles
    assert full[:per_epoch] != full[per_epoch : 2 * per_epoch]


def test_step_plan_is_transformers_linear_schedule_until_fitted():
    import torch
    from transformers import get_linear_schedule_with_warmup

    from export.training.train import StepPlan

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_linear_schedule_with_warmup(optimizer, 6, 100)
    plan = StepPlan(warmup=6, total=100)
    for step in range(105):
        assert plan.lr_factor(step) == reference.lr_lambdas[0](step), step


def test_step_plan_fit_ends_the_schedule_where_the_budget_runs_out():
    from export.training.train import FIT_MARGIN, StepPlan

    plan = StepPlan(warmup=60, total=1000)
    assert not plan.fit(step=60, seconds_per_step=0.5, seconds_left=600)  # 1,200 more fit: unchanged
    assert plan.total == 1000
    assert plan.fit(step=60, seconds_per_step=1.0, seconds_left=500)
    assert plan.total == 60 + int(500 * (1 - FIT_MARGIN))
    assert plan.lr_factor(plan.total) == 0.0 and plan.lr_factor(plan.total - 1) > 0.0
    shortened = plan.total
    assert not plan.fit(step=100, seconds_per_step=0.1, seconds_left=10_000)  # never lengthened
    assert plan.total == shortened
