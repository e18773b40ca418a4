"""The Event record as Python sees it, shared by the encoder and the services.

The wire forms (protobuf `persona.v1.Event` and the JSON shape below) are decoded into
this one type by `contract/codec.py`; the encoder only ever sees `Event`.

JSON shape (string values are categorical, numbers numeric, booleans the numbers 0 / 1; a
null value is absent)::

    {"user_id": "u1", "event_id": "e9", "ts_ms": 1732345678123,
     "type": "click", "props": {"item": "i42", "price": 9.99}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PropValue = str | float


@dataclass(frozen=True, slots=True)
class Event:
    """One user event. `props` maps a property name to a categorical (str) or numeric value."""

    user_id: str
    event_id: str
    ts_ms: int
    type: str
    props: Mapping[str, PropValue] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON shape, props in sorted key order (so equal events print equal)."""
        return {
            "user_id": self.user_id,
            "event_id": self.event_id,
            "ts_ms": self.ts_ms,
            "type": self.type,
            "props": {k: self.props[k] for k in sorted(self.props)},
        }

    def sort_key(self) -> tuple[int, str]:
        """Window order: event time, then event id (deterministic for equal timestamps)."""
        return (self.ts_ms, self.event_id)
