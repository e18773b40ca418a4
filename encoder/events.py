"""Moved to `contract.events` (owned by neither `encoder/` nor `services/`); this name stays
as a re-export so code written against it keeps working. Import `contract.events`."""

from contract.events import Event, PropValue

__all__ = ["Event", "PropValue"]
