"""Learner trajectories: the trend rules, and the memory and Redis stores (bounded and expiring)."""

import json
import random

import pytest
import redis.asyncio as aioredis

from gateway.backends.trajectory import MemoryTrajectoryStore, RedisTrajectoryStore, TrajectoryStore
from gateway.learning.policy import Policy, load_policy
from gateway.learning.trajectory import TrajectoryPoint, Trend, classify_trend
from tests.support.processes import free_port, start_redis, stop_process

POLICY = load_policy()


def with_trajectory(**changes: object) -> Policy:
    data = POLICY.model_dump()
    data["trajectory"].update(changes)
    return Policy.model_validate(data)


def series(*scores: float, start: float = 1000.0) -> list[TrajectoryPoint]:
    return [
        TrajectoryPoint(
            timestamp=start + 10 * i,
            readiness_score=s,
            valence=0.5,
            intervention_level="none",
            primary_emotion="none",
        )
        for i, s in enumerate(scores)
    ]


# --- classify_trend ---


@pytest.mark.parametrize(
    ("scores", "label"),
    [
        ((0.30, 0.40, 0.50, 0.60, 0.70), "improving"),
        ((0.80, 0.70, 0.60, 0.50, 0.40), "declining"),
        ((0.50, 0.52, 0.49, 0.51, 0.50), "stable"),
        ((0.20, 0.80, 0.20, 0.80, 0.20, 0.80), "volatile"),
        ((0.70, 0.50, 0.20, 0.40, 0.60), "recovering"),
        ((0.50, 0.60), "insufficient_data"),
        ((), "insufficient_data"),
    ],
)
def test_each_trend_label(scores, label):
    assert classify_trend(series(*scores), POLICY).label == label


def test_trend_numbers():
    trend = classify_trend(series(0.3, 0.4, 0.5, 0.6, 0.7), POLICY)
    assert (trend.label, trend.points) == ("improving", 5)
    assert trend.slope == pytest.approx(0.1)
    assert trend.volatility == pytest.approx(0.0, abs=1e-12)
    short = classify_trend(series(0.5, 0.6), POLICY)
    assert short == Trend("insufficient_data", None, None, 2)
    assert POLICY.trajectory.min_points == 3  # the case above is just below it


def test_recovering_needs_a_dip_not_a_low_start():
    # the same rise, but from a low first point: that is improvement, not recovery
    assert classify_trend(series(0.20, 0.25, 0.30, 0.40, 0.55), POLICY).label == "improving"
    # a dip that never went below the recovering cut is not a recovery either
    assert classify_trend(series(0.80, 0.60, 0.50, 0.65, 0.80), POLICY).label != "recovering"
    # the same V shape with the recovery rule checked first beats volatile and declining
    v_shape = classify_trend(series(0.70, 0.50, 0.20, 0.40, 0.60), POLICY)
    assert v_shape.slope is not None and v_shape.slope < 0
    assert v_shape.volatility is not None and v_shape.volatility >= POLICY.trajectory.volatility_threshold


def test_only_the_latest_window_counts_in_time_order():
    window = POLICY.trajectory.window
    falling = [0.9 - 0.05 * i for i in range(10)]
    rising = [0.2 + 0.05 * i for i in range(window)]
    points = series(*falling, *rising)
    random.Random(3).shuffle(points)  # the store order is not trusted: timestamps decide
    trend = classify_trend(points, POLICY)
    assert trend.label == "improving"
    assert trend.points == window


def test_point_validation():
    with pytest.raises(ValueError, match="readiness_score must be in"):
        series(1.2)
    with pytest.raises(ValueError, match="timestamp must be finite"):
        TrajectoryPoint(float("nan"), 0.5, 0.5, "none", "none")


# --- memory store ---


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_memory_store_keeps_the_latest_max_history_points():
    policy = with_trajectory(max_history=10)
    store: TrajectoryStore = MemoryTrajectoryStore(policy)
    points = series(*[i / 100 for i in range(25)])
    for point in points:
        await store.append("ada", point)
    assert await store.history("ada") == points[-10:]
    assert await store.history("bob") == []


async def test_memory_store_bounds_the_number_of_learners():
    store = MemoryTrajectoryStore(POLICY, maxsize=3)
    for learner in ("a", "b", "c", "d"):
        await store.append(learner, series(0.5)[0])
    assert len(store) == 3
    assert await store.history("a") == []  # the least recently used learner made room
    assert len(await store.history("d")) == 1


async def test_memory_store_expires_ttl_after_the_last_append():
    clock = FakeClock()
    ttl = POLICY.trajectory.ttl_seconds
    store = MemoryTrajectoryStore(POLICY, timer=clock)
    first, second = series(0.4, 0.5)
    await store.append("ada", first)
    clock.now = ttl - 10
    await store.append("ada", second)  # restarts the TTL
    clock.now = ttl + 5
    assert await store.history("ada") == [first, second]
    clock.now = ttl - 10 + ttl + 1
    assert await store.history("ada") == []
    assert len(store) == 0


async def test_memory_store_rejects_an_empty_learner_id():
    with pytest.raises(ValueError, match="learner_id"):
        await MemoryTrajectoryStore(POLICY).append("", series(0.5)[0])


# --- Redis store, against a real redis-server ---


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis") / "redis.log")
    try:
        yield port
    finally:
        stop_process(proc)


@pytest.fixture
async def redis_client(redis_port):
    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_redis_store_round_trip_trim_and_expiry(redis_client):
    policy = with_trajectory(max_history=10, ttl_seconds=120)
    store: TrajectoryStore = RedisTrajectoryStore(redis_client, policy, prefix="test:traj:")
    points = series(*[i / 100 for i in range(25)])
    for point in points:
        await store.append("ada", point)
    assert await store.history("ada") == points[-10:]
    assert await redis_client.llen("test:traj:ada") == 10
    assert 0 < await redis_client.ttl("test:traj:ada") <= 120
    assert await store.history("bob") == []
    assert await redis_client.exists("test:traj:bob") == 0


async def test_redis_store_expires_the_learner_ttl_seconds_after_the_last_append(redis_client):
    # Redis does the expiring; what the store owes it is the expiry on every append (no sleeping here).
    store = RedisTrajectoryStore(redis_client, with_trajectory(ttl_seconds=600), prefix="test:traj:")
    await store.append("ada", series(0.5)[0])
    assert len(await store.history("ada")) == 1
    assert 590 < await redis_client.ttl("test:traj:ada") <= 600
    await redis_client.expire("test:traj:ada", 5)  # as if most of the TTL had passed
    await store.append("ada", series(0.6)[0])
    assert 590 < await redis_client.ttl("test:traj:ada") <= 600  # the append restarted it


async def test_redis_store_skips_a_corrupt_entry(redis_client):
    store = RedisTrajectoryStore(redis_client, POLICY, prefix="test:traj:")
    good = series(0.3, 0.6)
    await store.append("ada", good[0])
    await redis_client.rpush("test:traj:ada", "not json", json.dumps({"timestamp": 1.0}))
    await store.append("ada", good[1])
    assert await store.history("ada") == good


async def test_both_stores_feed_the_classifier_alike(redis_client):
    points = series(0.8, 0.7, 0.6, 0.5, 0.4)
    memory = MemoryTrajectoryStore(POLICY)
    shared = RedisTrajectoryStore(redis_client, POLICY)
    for point in points:
        await memory.append("ada", point)
        await shared.append("ada", point)
    assert classify_trend(await memory.history("ada"), POLICY) == classify_trend(
        await shared.history("ada"), POLICY
    )
    assert classify_trend(await shared.history("ada"), POLICY).label == "declining"


# --- erasure (issue 14): a tenant's learner leaves no key behind ---


async def test_erasing_a_tenants_learner_in_redis_leaves_no_key_of_it(redis_client):
    from gateway.backends.cache import NoCache
    from gateway.core.pipeline import Pipeline
    from gateway.metrics import Metrics
    from tests.unit.test_gateway_pipeline import Triton

    store = RedisTrajectoryStore(redis_client, POLICY)  # the gateway's own key scheme
    pipeline = Pipeline(
        triton=Triton(), cache=NoCache(), trajectories=store, policy=POLICY, metrics=Metrics()
    )
    for tenant, learner in [("acme", "L:1"), ("acme", "L:1"), ("beta", "L:1"), ("acme", "L:2")]:
        await pipeline.analyse(["hello"], learner, tenant=tenant)
    assert sorted(await redis_client.keys("*")) == [
        b"goemotions:learner:acme:L:1",
        b"goemotions:learner:acme:L:2",
        b"goemotions:learner:beta:L:1",
    ]
    erased = await pipeline.erase("acme", "L:1", "key-1")
    assert (erased.trajectory_points, erased.audit_rows) == (2, 0)
    assert await redis_client.keys("*acme:L:1*") == []
    assert sorted(await redis_client.keys("*")) == [
        b"goemotions:learner:acme:L:2",
        b"goemotions:learner:beta:L:1",
    ]
    assert (await pipeline.erase("acme", "L:1", "key-1")).trajectory_points == 0  # idempotent
    assert len(await store.history("beta:L:1")) == 1


async def test_erasing_a_default_tenant_learner_also_removes_its_list_from_before_tenants(redis_client):
    store = RedisTrajectoryStore(redis_client, POLICY)
    await redis_client.rpush("goemotions:trajectory:ada", json.dumps(series(0.5)[0].__dict__))
    await redis_client.rpush("goemotions:trajectory:bob", json.dumps(series(0.5)[0].__dict__))
    await store.append("default:ada", series(0.6)[0])
    assert await store.erase("default:ada") == 2
    assert await redis_client.keys("*ada*") == []
    assert await redis_client.exists("goemotions:trajectory:bob") == 1
    await store.append("acme:bob", series(0.6)[0])
    assert await store.erase("acme:bob") == 1  # another tenant's: the old list was never theirs
    assert await redis_client.exists("goemotions:trajectory:bob") == 1


async def test_the_memory_store_erases_one_learner():
    store = MemoryTrajectoryStore(POLICY)
    for point in series(0.1, 0.2):
        await store.append("acme:ada", point)
    await store.append("beta:ada", series(0.3)[0])
    assert await store.erase("acme:ada") == 2
    assert await store.erase("acme:ada") == 0
    assert await store.history("acme:ada") == [] and len(await store.history("beta:ada")) == 1
