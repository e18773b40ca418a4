"""Idle users encoded again on a doubling schedule (`RefreshConfig.rescore_after_s`): the
schedule, and the store's rescore sets against a real Valkey and broker."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from contract.events import Event
from services.refresh.config import RefreshConfig
from services.refresh.metrics import refresh_metrics
from services.refresh.refresher import now_ms
from services.store.forget import StoreForgetter
from services.store.layout import NO_RESCORE
from tests.refresh.conftest import Env
from tests.store_support import UserUpdate, apply_events

DAY = 86_400_000


def _due(after_s: float | None, at: int, newest: int, until_s: float = 30 * 86_400.0) -> int:
    cfg = RefreshConfig(rescore_after_s=after_s, rescore_until_s=until_s)
    return cfg.next_rescore(at, newest)


def test_the_schedule_doubles_the_idle_time_and_ends_past_the_limit() -> None:
    e = 1_800_000_000_000
    assert _due(86_400, e, e) == e + DAY  # just active: one day after its newest event
    at, seen = e + DAY, []
    while at != NO_RESCORE:  # encoded exactly when due, each time
        seen.append((at - e) // DAY)
        at = _due(86_400, at, e)
    assert seen == [1, 2, 4, 8, 16]  # then 32 days > 30: no more
    assert _due(86_400, e + 3 * DAY, e) == e + 6 * DAY  # a late rescore keeps doubling
    assert _due(None, e, e) == NO_RESCORE
    with pytest.raises(ValueError, match="rescore_after_s"):
        RefreshConfig(rescore_after_s=0)
    with pytest.raises(ValueError, match="rescore_after_s"):
        RefreshConfig(rescore_after_s=10, rescore_until_s=5)


@pytest.mark.integration
def test_idle_users_are_encoded_again_when_due_and_forgetting_ends_it(env: Env) -> None:
    users = [f"idle{i}" for i in range(20)]
    newest = now_ms() - 2_000

    def events(u: str) -> list[tuple[int, Event]]:
        return [(k, Event(u, f"{u}-e{k}", newest - 1_000 * k, "view", {})) for k in range(3)]

    apply_events(env.windows, [UserUpdate(u, 0, events(u)) for u in users])
    reg = CollectorRegistry()
    metrics = refresh_metrics(reg)
    cfg = RefreshConfig(
        embeddings_topic=env.topic, batch_size=8, interval_s=0.2, check_every_s=0.05,
        rescore_after_s=1.0, rescore_until_s=3_600.0,
    )  # fmt: skip
    first = env.refresher(cfg, metrics).run(threading.Event(), until_idle=True)
    assert first.users == 20 and first.rescored == 0 and env.windows.dirty_count() == 0
    before = {u: v for u, [v] in zip(users, env.vectors.get_batch(users, env.v1), strict=True)}
    # due at the encode time plus the time idle so far (~2 s: more than rescore_after_s)
    assert env.vectors.due_rescores(64, now_ms()) == []
    assert sorted(env.vectors.due_rescores(64, now_ms() + 60_000)) == sorted(users)
    while len(env.vectors.due_rescores(64, now_ms())) < len(users):
        time.sleep(0.2)
    again = env.refresher(cfg, metrics).run(threading.Event(), until_idle=True)
    assert again.rescored == 20 and again.vectors_written == 20
    assert reg.get_sample_value("persona_refresh_users_rescored_total") == 20
    assert reg.get_sample_value("persona_refresh_event_to_vector_seconds_count") == 20  # first
    for u, hist in zip(users, env.vectors.get_batch(users, env.v1, history=4), strict=True):
        [v] = hist  # the same window version: the head is replaced, not pushed
        assert v.window_version == before[u].window_version
        assert v.computed_at_ms > before[u].computed_at_ms
    # the next time doubles the idleness: not due again within the next two seconds
    assert env.vectors.due_rescores(64, now_ms() + 2_000) == []
    assert sorted(env.vectors.due_rescores(64, now_ms() + 60_000)) == sorted(users)

    StoreForgetter(env.client).forget(users[:5], now_ms())
    assert sorted(env.vectors.due_rescores(64, now_ms() + 60_000)) == sorted(users[5:])
