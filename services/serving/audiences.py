"""GetAudience as a plain function: the users of a version whose outcome score passes a
threshold, or the top N, one page at a time.

Order of work: resolve the version (the active one, or the token's) and the score column
(outcome, horizon) from the version's score columns; fix the threshold (the request's
min_score, or for top N the N-th best score, found once on the first page); count each
bucket's members above it; cut the page out of those counts from the token's position;
read the page's spans; say where the next page starts. The token carries the version,
column, threshold, position and, for top N, how many users are still owed, so every page
of one audience reads the same version with the same threshold.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass

from services.serving.errors import invalid, precondition
from services.serving.ports import VectorReader
from services.serving.store_calls import Budget, StoreCaller
from services.serving.versions import VersionResolver
from services.store.audience import INF, page_spans

DEFAULT_PAGE, MAX_PAGE = 10_000, 100_000
# top_n's bound: its threshold reads about top_n scores (all of an audience smaller than
# it) in one call, so uint32's 4e9 read every member; larger audiences page by score bounds
MAX_TOP_N = 1_000_000


@dataclass(frozen=True, slots=True)
class AudienceQuery:
    outcome: str = ""
    horizon_ms: int = 0
    min_score: float | None = None
    top_n: int | None = None
    max_score: float | None = None  # with min_score or alone: a range (e.g. churn risk)
    page_size: int = 0
    page_token: str = ""
    model_version: str = ""


@dataclass(frozen=True, slots=True)
class AudienceResult:
    version: str
    user_ids: list[str]
    scores: list[float]
    next_token: str
    threshold: float


@dataclass(frozen=True, slots=True)
class _Cursor:
    version: str
    column: int
    threshold: float
    bucket: int
    offset: int
    owed: int  # users still to send (-1: no limit, a threshold audience)
    ceiling: float = INF  # max_score (inf: none)

    def encode(self) -> str:
        top = None if self.ceiling == INF else self.ceiling
        raw = json.dumps([self.version, self.column, self.threshold, self.bucket, self.offset,
                          self.owed, top], separators=(",", ":"))  # fmt: skip
        return base64.urlsafe_b64encode(raw.encode()).decode()

    @classmethod
    def decode(cls, token: str) -> _Cursor:
        try:
            v, c, t, b, o, owed, *rest = json.loads(base64.urlsafe_b64decode(token.encode()))
            top = INF if not rest or rest[0] is None else float(rest[0])
            cur = cls(str(v), int(c), float(t), int(b), int(o), int(owed), top)
        except Exception:
            raise invalid("page_token is not a token this service issued") from None
        if min(cur.column, cur.bucket, cur.offset) < 0 or not math.isfinite(cur.threshold):
            raise invalid("page_token is not a token this service issued")
        if not (0.0 <= cur.ceiling <= 1.0 or cur.ceiling == INF):  # NaN fails: a forged token
            raise invalid("page_token is not a token this service issued")
        return cur


def get_audience(
    q: AudienceQuery,
    *,
    store: VectorReader,
    versions: VersionResolver,
    caller: StoreCaller,
    budget: Budget,
) -> AudienceResult:
    size = q.page_size or DEFAULT_PAGE
    if not 1 <= size <= MAX_PAGE:
        raise invalid(f"page_size must be 0 (= {DEFAULT_PAGE}) or 1..{MAX_PAGE}, got {size}")
    if q.page_token:
        cur = _Cursor.decode(q.page_token)
        versions.state_of(cur.version, budget)  # still known (else INVALID_ARGUMENT)
    else:
        cur = _first(q, store, versions, caller, budget)

    def page() -> tuple[list[str], list[float], str]:
        per_bucket = store.audience_counts(cur.version, cur.column, cur.threshold, cur.ceiling)
        want = size if cur.owed < 0 else min(size, cur.owed)
        spans = page_spans(per_bucket, cur.bucket, cur.offset, want)
        got = store.audience_members(cur.version, cur.column, cur.threshold, spans, cur.ceiling)
        ids = [u for us, _ in got for u in us]
        scores = [s for _, ss in got for s in ss]
        if not spans or len(ids) < want or cur.owed == len(ids):
            return ids, scores, ""
        b, o, n = spans[-1]
        if int(per_bucket[b]) <= o + n and not per_bucket[b + 1 :].any():
            return ids, scores, ""  # this page took the last members: no empty page after it
        nxt = _Cursor(cur.version, cur.column, cur.threshold, b, o + n,
                      -1 if cur.owed < 0 else cur.owed - len(ids), cur.ceiling)  # fmt: skip
        return ids, scores, nxt.encode()

    ids, scores, token = caller.call(page, budget, "read the audience")
    return AudienceResult(cur.version, ids, scores, token, cur.threshold)


def _first(
    q: AudienceQuery, store: VectorReader, versions: VersionResolver, caller: StoreCaller,
    budget: Budget,
) -> _Cursor:  # fmt: skip
    """The first page's cursor: version, column, threshold."""
    if q.top_n is not None and (q.min_score is not None or q.max_score is not None):
        raise invalid("give top_n, or min_score and/or max_score, not both")
    if q.top_n is None and q.min_score is None and q.max_score is None:
        raise invalid("give top_n, or min_score and/or max_score")
    for name, x in (("min_score", q.min_score), ("max_score", q.max_score)):
        if x is not None and not 0.0 <= x <= 1.0:  # NaN fails too
            raise invalid(f"{name} must be a probability in [0, 1], got {x}")
    lo = 0.0 if q.min_score is None else float(q.min_score)
    hi = INF if q.max_score is None else float(q.max_score)
    if lo > hi:
        raise invalid(f"min_score ({lo}) is above max_score ({hi})")
    if q.top_n is not None and not 1 <= q.top_n <= MAX_TOP_N:
        raise invalid(
            f"top_n must be 1..{MAX_TOP_N}, got {q.top_n} (a larger audience: min_score, paged)"
        )
    version = versions.resolve(q.model_version, budget)
    column = versions.column_of(version, q.outcome, q.horizon_ms, budget)
    cols = versions.score_columns(version, budget)  # cached by column_of
    if not cols[column].audience:
        raise precondition(
            f"score column ({q.outcome[:80]!r}, {q.horizon_ms} ms) of version {version} is not"
            " kept in audience sets (the refreshers' PERSONA_REFRESH_AUDIENCES)"
        )
    if q.top_n is None:
        return _Cursor(version, column, lo, 0, 0, -1, hi)
    n = int(q.top_n)
    t = caller.call(lambda: store.audience_threshold(version, column, n), budget, "top N")
    return _Cursor(version, column, t, 0, 0, n)
