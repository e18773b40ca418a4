"""Default topic names. Every command takes the actual names as flags or PERSONA_*
variables; these are the defaults they fall back on, written once.

- `EVENTS`: producers' events, key = user id, value = `persona.v1.Event` (or its JSON);
- `dead_letters(topic)`: the records of `topic` ingest refused, with the reason in headers;
- `EMBEDDINGS`: the update log, compacted, key = `<version>/<user id>`, value =
  `persona.v1.EmbeddingUpdate` (`contract.updates`);
- `SERVED`: a sample of GetEmbeddings answers, key = user id, value = one JSON object
  (`services/serving/served_log.py`), to join outcomes to what was served;
- `REFRESH_SHARES`: no records; its partitions stand for bucket ranges, and the refresh
  workers' consumer group divides them (`services/refresh/share.py`).
"""

from __future__ import annotations

EVENTS = "persona.events"
EMBEDDINGS = "persona.embeddings"
REFRESH_SHARES = "persona.refresh.shares"
SERVED = "persona.served"


def dead_letters(events_topic: str) -> str:
    """The dead-letter topic of an events topic.

    >>> dead_letters(EVENTS)
    'persona.events.dlq'
    """
    return f"{events_topic}.dlq"


DEAD_LETTERS = dead_letters(EVENTS)
