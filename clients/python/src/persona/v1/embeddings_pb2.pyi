from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EmbeddingUpdate(_message.Message):
    __slots__ = ("user_id", "model_version", "computed_at_ms", "vector", "dim", "n_events", "window_version", "scores")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    N_EVENTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    model_version: str
    computed_at_ms: int
    vector: bytes
    dim: int
    n_events: int
    window_version: int
    scores: bytes
    def __init__(self, user_id: _Optional[str] = ..., model_version: _Optional[str] = ..., computed_at_ms: _Optional[int] = ..., vector: _Optional[bytes] = ..., dim: _Optional[int] = ..., n_events: _Optional[int] = ..., window_version: _Optional[int] = ..., scores: _Optional[bytes] = ...) -> None: ...
