"""`persona ingest --until-idle`: is every partition of the topic applied and committed?

Not only this member's: a partition held by another member, or by a dead one the group has
not dropped yet, is done only when the group's committed offset reaches its end (issue #18:
a restart right after SIGKILLs was given half the partitions, drained them and exited 0).
A wait that makes no progress for longer than a dead member can hold its partitions
(session timeout + max poll interval) ends in `False`: the command exits non-zero rather
than wait forever or claim it caught up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka import KafkaException

from services.common.kafka_admin import end_offsets
from services.config import KafkaConfig
from services.ingest.source import EventSource

log = logging.getLogger(__name__)


def topic_behind(source: EventSource, cfg: KafkaConfig) -> dict[int, int] | None:
    """{partition: records between the group's committed offset and the end} for each
    partition of `cfg.topic` not fully committed ({} = all done); None when the broker
    could not say, or this member's commit failed (asked again later).

    Call it with nothing in flight (after `Ingestor.commit`). This member's partitions read
    to their end whose commit lags their position (nothing was committed: an empty start,
    one past retention, a commit that failed) are committed at their position first: every
    record below it was applied or dead-lettered in a committed batch.
    """
    try:
        ends = end_offsets(cfg.bootstrap, cfg.topic)
        committed = source.committed(sorted(ends))
        mine = {}
        for p in source.assignment():
            pos = source.position(p)
            if pos is not None and pos > committed.get(p, -1) and pos >= ends.get(p, 0):
                mine[p] = pos
        if mine:
            source.commit(mine)
            committed.update(mine)
    except (KafkaException, TimeoutError, KeyError, OSError) as exc:
        log.warning("until-idle: cannot read or commit the topic's offsets (%s); again", exc)
        return None
    done = {p: max(committed.get(p, -1), 0) for p in ends}
    return {p: end - done[p] for p, end in ends.items() if done[p] < end}


class UntilIdle:
    """`Ingestor.run(until_idle=True)`'s stopping test, asked after each `commit` when a
    poll brought nothing.

    `check` answers None (go on), True (every partition of the topic applied and committed:
    exit 0) or False (gave up: this member has had nothing to read, and the topic's
    uncommitted remainder has not shrunk, for `give_up_s`).
    """

    def __init__(self, cfg: KafkaConfig) -> None:
        self.cfg = cfg
        self.started = time.monotonic()
        # a dead member keeps its partitions until its session times out, then the
        # rebalance may take up to a poll interval
        self.give_up_s = (cfg.session_timeout_ms + cfg.max_poll_interval_ms) / 1000
        self.behind: dict[int, int] | None = None  # the last answer of `topic_behind`
        self._checked = -1e9
        self._waiting_since: float | None = None
        self._least_behind: int | None = None

    def progress(self) -> None:
        """A batch arrived: this member has work, the wait starts again."""
        self._waiting_since = None

    def check(self, source: EventSource, lags: Mapping[int, int | None]) -> bool | None:
        """`lags`: this member's partitions (from `Ingestor._update_lag`)."""
        now = time.monotonic()
        if lags and not all(lag == 0 for lag in lags.values()):
            self._waiting_since = None
            return None
        if not lags and now - self.started < 2 * self.cfg.session_timeout_ms / 1000:
            return None  # the join may not have settled yet
        if now - self._checked < 1.0:
            return None
        self._checked = now
        if self._waiting_since is None:
            self._waiting_since = now
        self.behind = behind = topic_behind(source, self.cfg)
        if behind == {}:
            return True
        if behind is not None:
            total = sum(behind.values())
            if self._least_behind is None or total < self._least_behind:
                self._least_behind = total
                self._waiting_since = now  # another member is making progress
            log.info(
                "until-idle: this member's partitions are done; waiting for %s (records behind"
                " the end, by partition), held by another member or one not yet dropped",
                behind,
            )
        if now - self._waiting_since > self.give_up_s:
            log.error(
                "until-idle: giving up after %.0f s without progress; not committed to the"
                " end: %s",
                self.give_up_s, "unknown (offsets unreadable)" if behind is None else behind,
            )  # fmt: skip
            return False
        return None
