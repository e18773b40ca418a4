from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VectorEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_ENCODING_UNSPECIFIED: _ClassVar[VectorEncoding]
    VECTOR_ENCODING_FLOAT32: _ClassVar[VectorEncoding]
    VECTOR_ENCODING_FLOAT16: _ClassVar[VectorEncoding]

class Fallback(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_UNSPECIFIED: _ClassVar[Fallback]
    FALLBACK_NONE: _ClassVar[Fallback]
    FALLBACK_POPULATION_PRIOR: _ClassVar[Fallback]

class EmbeddingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_STATUS_UNSPECIFIED: _ClassVar[EmbeddingStatus]
    EMBEDDING_STATUS_FOUND: _ClassVar[EmbeddingStatus]
    EMBEDDING_STATUS_NOT_FOUND: _ClassVar[EmbeddingStatus]
    EMBEDDING_STATUS_FALLBACK_PRIOR: _ClassVar[EmbeddingStatus]

class VectorPart(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_PART_UNSPECIFIED: _ClassVar[VectorPart]
    VECTOR_PART_NEARLINE: _ClassVar[VectorPart]
    VECTOR_PART_SHORT_TERM: _ClassVar[VectorPart]
    VECTOR_PART_COMBINED: _ClassVar[VectorPart]

class SeedMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEED_MODE_UNSPECIFIED: _ClassVar[SeedMode]
    SEED_MODE_MEAN: _ClassVar[SeedMode]
    SEED_MODE_UNION: _ClassVar[SeedMode]

class ModelVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATE_UNSPECIFIED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_BACKFILLING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_READY: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_ACTIVE: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_RETIRED: _ClassVar[ModelVersionState]
VECTOR_ENCODING_UNSPECIFIED: VectorEncoding
VECTOR_ENCODING_FLOAT32: VectorEncoding
VECTOR_ENCODING_FLOAT16: VectorEncoding
FALLBACK_UNSPECIFIED: Fallback
FALLBACK_NONE: Fallback
FALLBACK_POPULATION_PRIOR: Fallback
EMBEDDING_STATUS_UNSPECIFIED: EmbeddingStatus
EMBEDDING_STATUS_FOUND: EmbeddingStatus
EMBEDDING_STATUS_NOT_FOUND: EmbeddingStatus
EMBEDDING_STATUS_FALLBACK_PRIOR: EmbeddingStatus
VECTOR_PART_UNSPECIFIED: VectorPart
VECTOR_PART_NEARLINE: VectorPart
VECTOR_PART_SHORT_TERM: VectorPart
VECTOR_PART_COMBINED: VectorPart
SEED_MODE_UNSPECIFIED: SeedMode
SEED_MODE_MEAN: SeedMode
SEED_MODE_UNION: SeedMode
MODEL_VERSION_STATE_UNSPECIFIED: ModelVersionState
MODEL_VERSION_STATE_BACKFILLING: ModelVersionState
MODEL_VERSION_STATE_READY: ModelVersionState
MODEL_VERSION_STATE_ACTIVE: ModelVersionState
MODEL_VERSION_STATE_RETIRED: ModelVersionState

class GetEmbeddingsRequest(_message.Message):
    __slots__ = ("user_ids", "model_version", "history_depth", "encoding", "fallback", "include_scores", "part")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_DEPTH_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SCORES_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    history_depth: int
    encoding: VectorEncoding
    fallback: Fallback
    include_scores: bool
    part: VectorPart
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ..., history_depth: _Optional[int] = ..., encoding: _Optional[_Union[VectorEncoding, str]] = ..., fallback: _Optional[_Union[Fallback, str]] = ..., include_scores: _Optional[bool] = ..., part: _Optional[_Union[VectorPart, str]] = ...) -> None: ...

class VectorMetaColumns(_message.Message):
    __slots__ = ("computed_at_ms", "age_seconds", "n_events", "window_version", "newest_event_ms", "short_term_events")
    COMPUTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    N_EVENTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEWEST_EVENT_MS_FIELD_NUMBER: _ClassVar[int]
    SHORT_TERM_EVENTS_FIELD_NUMBER: _ClassVar[int]
    computed_at_ms: _containers.RepeatedScalarFieldContainer[int]
    age_seconds: _containers.RepeatedScalarFieldContainer[float]
    n_events: _containers.RepeatedScalarFieldContainer[int]
    window_version: _containers.RepeatedScalarFieldContainer[int]
    newest_event_ms: _containers.RepeatedScalarFieldContainer[int]
    short_term_events: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, computed_at_ms: _Optional[_Iterable[int]] = ..., age_seconds: _Optional[_Iterable[float]] = ..., n_events: _Optional[_Iterable[int]] = ..., window_version: _Optional[_Iterable[int]] = ..., newest_event_ms: _Optional[_Iterable[int]] = ..., short_term_events: _Optional[_Iterable[int]] = ...) -> None: ...

class GetEmbeddingsResponse(_message.Message):
    __slots__ = ("model_version", "dim", "encoding", "statuses", "vectors", "meta", "history_counts", "history_vectors", "history_meta", "n_scores", "scores", "history_scores", "part")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    HISTORY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_VECTORS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_META_FIELD_NUMBER: _ClassVar[int]
    N_SCORES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SCORES_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    dim: int
    encoding: VectorEncoding
    statuses: _containers.RepeatedScalarFieldContainer[EmbeddingStatus]
    vectors: bytes
    meta: VectorMetaColumns
    history_counts: _containers.RepeatedScalarFieldContainer[int]
    history_vectors: bytes
    history_meta: VectorMetaColumns
    n_scores: int
    scores: bytes
    history_scores: bytes
    part: VectorPart
    def __init__(self, model_version: _Optional[str] = ..., dim: _Optional[int] = ..., encoding: _Optional[_Union[VectorEncoding, str]] = ..., statuses: _Optional[_Iterable[_Union[EmbeddingStatus, str]]] = ..., vectors: _Optional[bytes] = ..., meta: _Optional[_Union[VectorMetaColumns, _Mapping]] = ..., history_counts: _Optional[_Iterable[int]] = ..., history_vectors: _Optional[bytes] = ..., history_meta: _Optional[_Union[VectorMetaColumns, _Mapping]] = ..., n_scores: _Optional[int] = ..., scores: _Optional[bytes] = ..., history_scores: _Optional[bytes] = ..., part: _Optional[_Union[VectorPart, str]] = ...) -> None: ...

class UserList(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class FindLookalikesRequest(_message.Message):
    __slots__ = ("user_id", "vector", "seeds", "k", "exclude_seeds", "min_score", "model_version", "seed_mode", "score_range")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_MODE_FIELD_NUMBER: _ClassVar[int]
    SCORE_RANGE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    vector: VectorQuery
    seeds: UserList
    k: int
    exclude_seeds: bool
    min_score: float
    model_version: str
    seed_mode: SeedMode
    score_range: ScoreRange
    def __init__(self, user_id: _Optional[str] = ..., vector: _Optional[_Union[VectorQuery, _Mapping]] = ..., seeds: _Optional[_Union[UserList, _Mapping]] = ..., k: _Optional[int] = ..., exclude_seeds: _Optional[bool] = ..., min_score: _Optional[float] = ..., model_version: _Optional[str] = ..., seed_mode: _Optional[_Union[SeedMode, str]] = ..., score_range: _Optional[_Union[ScoreRange, _Mapping]] = ...) -> None: ...

class ScoreRange(_message.Message):
    __slots__ = ("outcome", "horizon_ms", "min", "max")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    horizon_ms: int
    min: float
    max: float
    def __init__(self, outcome: _Optional[str] = ..., horizon_ms: _Optional[int] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class VectorQuery(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Neighbor(_message.Message):
    __slots__ = ("user_id", "score")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    score: float
    def __init__(self, user_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class FindLookalikesResponse(_message.Message):
    __slots__ = ("model_version", "neighbors", "seeds_used", "seeds_missing")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_USED_FIELD_NUMBER: _ClassVar[int]
    SEEDS_MISSING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    neighbors: _containers.RepeatedCompositeFieldContainer[Neighbor]
    seeds_used: int
    seeds_missing: int
    def __init__(self, model_version: _Optional[str] = ..., neighbors: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ..., seeds_used: _Optional[int] = ..., seeds_missing: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "state", "score_columns")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SCORE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: ModelVersionState
    score_columns: _containers.RepeatedCompositeFieldContainer[ScoreColumn]
    def __init__(self, version: _Optional[str] = ..., state: _Optional[_Union[ModelVersionState, str]] = ..., score_columns: _Optional[_Iterable[_Union[ScoreColumn, _Mapping]]] = ...) -> None: ...

class ScoreColumn(_message.Message):
    __slots__ = ("outcome", "horizon_ms", "calibrated", "audience")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    horizon_ms: int
    calibrated: bool
    audience: bool
    def __init__(self, outcome: _Optional[str] = ..., horizon_ms: _Optional[int] = ..., calibrated: _Optional[bool] = ..., audience: _Optional[bool] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("model_version", "size", "kind", "seconds_since_update", "lag_records")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_UPDATE_FIELD_NUMBER: _ClassVar[int]
    LAG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    size: int
    kind: str
    seconds_since_update: float
    lag_records: int
    def __init__(self, model_version: _Optional[str] = ..., size: _Optional[int] = ..., kind: _Optional[str] = ..., seconds_since_update: _Optional[float] = ..., lag_records: _Optional[int] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("active_version", "versions", "dim", "index")
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    active_version: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    dim: int
    index: IndexInfo
    def __init__(self, active_version: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., dim: _Optional[int] = ..., index: _Optional[_Union[IndexInfo, _Mapping]] = ...) -> None: ...

class GetAudienceRequest(_message.Message):
    __slots__ = ("outcome", "horizon_ms", "min_score", "top_n", "page_size", "page_token", "model_version", "max_score")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    horizon_ms: int
    min_score: float
    top_n: int
    page_size: int
    page_token: str
    model_version: str
    max_score: float
    def __init__(self, outcome: _Optional[str] = ..., horizon_ms: _Optional[int] = ..., min_score: _Optional[float] = ..., top_n: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., model_version: _Optional[str] = ..., max_score: _Optional[float] = ...) -> None: ...

class GetAudienceResponse(_message.Message):
    __slots__ = ("model_version", "user_ids", "scores", "next_page_token", "threshold")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    next_page_token: str
    threshold: float
    def __init__(self, model_version: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., next_page_token: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class ForgetUsersRequest(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetUsersResponse(_message.Message):
    __slots__ = ("forgotten", "windows", "vector_lists", "tombstones", "forgotten_at_ms")
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LISTS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    FORGOTTEN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    forgotten: int
    windows: int
    vector_lists: int
    tombstones: int
    forgotten_at_ms: int
    def __init__(self, forgotten: _Optional[int] = ..., windows: _Optional[int] = ..., vector_lists: _Optional[int] = ..., tombstones: _Optional[int] = ..., forgotten_at_ms: _Optional[int] = ...) -> None: ...
