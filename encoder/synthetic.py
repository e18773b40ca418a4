"""Synthetic users with planted truth, shared by tests, the demo and the benchmarks.

Every user belongs to a hidden *segment* (a taste over items, campaigns, pages and event
types, and a hidden propensity to buy) and moves through hidden *lifecycle* states
(new -> engaged <-> fading -> churned; a fading spell that recovers looks as quiet as one
that ends in churn, but only the latter shows disengagement within its sessions: slower
clicks, shorter dwell). Events come in sessions: bursts a few seconds to
minutes apart, with heavy-tailed (Gamma, shape < 1) gaps between sessions whose rate
depends on the lifecycle state. Outcomes after the window's end are drawn by simulating
the same hidden process forward, never from raw counts:

- ``converts``: a purchase in the 7 days after ``end_ms`` (probability from the segment's
  hidden propensity, a late-window purchase intent, and the lifecycle state);
- ``churns``: no event at all in the 14 days after ``end_ms``.

Two seeds: ``world_seed`` fixes the world (segments, item pools, prices), ``seed`` the
users. A held-out set is the same world with another ``seed`` (and ``first_user``).

Example::

    ds = generate(SyntheticConfig(users=100, seed=1))
    ds.events[0]          # Event(user_id='u000042', event_id='s1-u000042-e00000', ...)
    ds.truth["u000042"]   # UserTruth(segment=3, lifecycle='engaged', converts=False, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from contract.events import Event, PropValue
from encoder.synthetic_lifecycle import LEN, RATE, sessions, sigmoid, state_at, trajectory

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SYNTHETIC_FUTURE_MS = 14 * DAY_MS  # the future drawn past end_ms (`future_events`, outcomes)

Lifecycle = Literal["new", "engaged", "fading", "churned"]
LIFECYCLES: tuple[Lifecycle, ...] = ("new", "engaged", "fading", "churned")

EVENT_TYPES: tuple[str, ...] = (
    "app_open",
    "page_view",
    "search",
    "impression",
    "click",
    "item_view",
    "video_view",
    "add_to_cart",
    "purchase",
)
DEVICES: tuple[str, ...] = ("ios", "android", "web", "tablet")
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA")

# Which properties each event type carries.
_PROPS_OF: dict[str, tuple[str, ...]] = {
    "app_open": ("device", "country"),
    "page_view": ("page", "device", "country"),
    "search": ("page", "device"),
    "impression": ("campaign", "advertiser", "device"),
    "click": ("campaign", "advertiser", "item", "device"),
    "item_view": ("item", "advertiser", "price", "dwell_s"),
    "video_view": ("campaign", "item", "dwell_s"),
    "add_to_cart": ("item", "advertiser", "price"),
    "purchase": ("item", "advertiser", "price"),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic data set. Same config, same events, byte for byte."""

    users: int = 2000
    events_per_user: float = 100.0  # mean over users; actual counts vary with lifecycle
    segments: int = 8
    seed: int = 0
    end_ms: int = 1_763_900_000_000  # window end ("now" of the data set), fixed for determinism
    world_seed: int = 0  # segments, item pools, prices: keep equal across train / held-out
    first_user: int = 0  # user ids start here (held-out sets use another range)
    days: float = 30.0  # span of the window before end_ms
    items: int = 4000
    campaigns: int = 240
    advertisers: int = 60
    pages: int = 80
    in_segment: float = 0.8  # share of item / campaign / page draws from the segment's pool
    events_per_session: float = 7.0
    session_gap_shape: float = 0.5  # Gamma shape of gaps between sessions (< 1: bursty)
    min_sessions: int = 2
    # an intent switch: this share of users take up another segment's tastes (types, items,
    # campaigns, pages) in the last `switch_days` of the window (`UserTruth.switched_at_ms`)
    switch_share: float = 0.0
    switch_days: float = 3.0


@dataclass(frozen=True)
class UserTruth:
    """The hidden state of one user at ``end_ms`` and its outcomes after it."""

    user_id: str
    segment: int
    lifecycle: str  # new|engaged|fading|churned at end_ms
    converts: bool  # a purchase within 7 days after end_ms
    churns: bool  # no events within 14 days after end_ms
    switched_at_ms: int | None = None  # when the user switched segment (None: never)
    switched_to: int | None = None
    state: str = ""  # the hidden state at end_ms (lifecycle's "fading" is fading or slowing)
    activity: float = 1.0  # the user's hidden session-rate multiplier


@dataclass(frozen=True)
class SyntheticDataset:
    config: SyntheticConfig
    events: list[Event]  # sorted by (ts_ms, event_id); all ts_ms <= end_ms
    truth: dict[str, UserTruth]
    future_events: list[Event] = field(default_factory=list)  # (end_ms, end_ms + 14 d]

    def user_ids(self) -> list[str]:
        return sorted(self.truth)

    def windows(self, max_events: int | None = None) -> dict[str, list[Event]]:
        """Each user's events in window order (the last ``max_events`` when given)."""
        out: dict[str, list[Event]] = {u: [] for u in self.truth}
        for e in self.events:
            out[e.user_id].append(e)
        if max_events is not None:
            out = {u: w[-max_events:] for u, w in out.items()}
        return out


@dataclass(frozen=True)
class _World:
    type_probs: np.ndarray  # (S, n_types)
    item_pools: list[np.ndarray]  # per segment, item indices
    campaign_pools: list[np.ndarray]
    page_pools: list[np.ndarray]
    country_probs: np.ndarray  # (S, n_countries)
    propensity: np.ndarray  # (S,) logit offset for converting
    item_cdf: list[np.ndarray]  # per segment, Zipf cumulative probabilities over its pool
    item_price: np.ndarray  # (items,)
    item_advertiser: np.ndarray  # (items,)
    campaign_advertiser: np.ndarray  # (campaigns,)


def _zipf_probs(n: int, a: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** a
    return p / p.sum()


def _make_world(cfg: SyntheticConfig) -> _World:
    rng = np.random.default_rng([cfg.world_seed, 7919])
    s = cfg.segments
    base = np.array([1.0, 2.0, 0.7, 2.5, 1.0, 1.6, 0.6, 0.35, 0.12])
    type_probs = rng.dirichlet(base * 40.0, size=s)  # similar mixes: taste is in items

    def pools(n: int) -> list[np.ndarray]:
        perm = rng.permutation(n)
        return [perm[i::s] for i in range(s)]

    propensity = np.linspace(-2.2, 1.2, s)
    rng.shuffle(propensity)
    item_pools = pools(cfg.items)
    return _World(
        type_probs=type_probs,
        item_pools=item_pools,
        item_cdf=[np.cumsum(_zipf_probs(len(p))) for p in item_pools],
        campaign_pools=pools(cfg.campaigns),
        page_pools=pools(cfg.pages),
        country_probs=rng.dirichlet(np.full(len(COUNTRIES), 0.7), size=s),
        propensity=propensity,
        item_price=np.round(np.exp(rng.normal(3.0, 1.0, size=cfg.items)), 2),
        item_advertiser=rng.integers(0, cfg.advertisers, size=cfg.items),
        campaign_advertiser=rng.integers(0, cfg.advertisers, size=cfg.campaigns),
    )


_CONVERT_STATE = {"new": 0.0, "engaged": 0.4, "fading": -0.8, "slowing": -0.8, "churned": -3.0}
_T = {name: k for k, name in enumerate(EVENT_TYPES)}


@dataclass
class _UserPlan:
    seg: int
    signup: float  # days after the window start (may be negative)
    activity: float
    traj: list[tuple[float, str]]
    switch: tuple[float, int] | None = None  # (day, new segment)


def _plan_users(
    cfg: SyntheticConfig, rngs: list[np.random.Generator]
) -> tuple[list[_UserPlan], float]:
    """Hidden segment and lifecycle path per user, and the session-rate scale for the mean."""
    plans: list[_UserPlan] = []
    expected = 0.0
    for rng in rngs:
        seg = int(rng.integers(0, cfg.segments))
        if rng.random() < 0.1:
            signup = cfg.days - rng.uniform(0.0, 6.0)
        else:
            signup = rng.uniform(-40.0, cfg.days - 6.0)
        activity = float(np.exp(rng.normal(0.0, 0.4)))
        traj = trajectory(rng, signup, cfg.days + 14.0)
        plan = _UserPlan(seg, signup, activity, traj)
        if cfg.switch_share > 0:  # its own stream: users who do not switch stay byte-equal
            srng = np.random.default_rng([cfg.seed, cfg.first_user + len(plans), 7])
            if srng.random() < cfg.switch_share:
                seg2 = (seg + 1 + int(srng.integers(0, cfg.segments - 1))) % cfg.segments
                plan.switch = (cfg.days - float(srng.uniform(0.0, cfg.switch_days)), seg2)
        plans.append(plan)
        bounds = [*(t for t, _ in traj[1:]), cfg.days]
        for (ta, s), tb in zip(traj, bounds, strict=False):
            lo, hi = max(ta, 0.0), min(tb, cfg.days)
            if hi > lo:
                expected += (hi - lo) * RATE[s] * LEN[s] * activity
    scale = cfg.events_per_user * cfg.users / max(expected * cfg.events_per_session, 1e-9)
    return plans, scale


def _switched(
    cfg: SyntheticConfig, world: _World, plan: _UserPlan, n: int, src: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Types, items, campaigns, pages (N,) of the segment a switching user moves to."""
    assert plan.switch is not None
    seg = plan.switch[1]
    rng = np.random.default_rng([cfg.seed, int(plan.switch[0] * 1e6), seg, 11])
    pool, cp, pp = world.item_pools[seg], world.campaign_pools[seg], world.page_pools[seg]
    own = rng.random(size=(3, n)) < cfg.in_segment
    zipf = np.minimum(np.searchsorted(world.item_cdf[seg], rng.random(n)), len(pool) - 1)
    return (
        rng.choice(len(EVENT_TYPES), size=n, p=world.type_probs[seg]),
        np.where(own[0], pool[zipf], rng.integers(0, cfg.items, size=n))[src],
        np.where(own[1], cp[rng.integers(0, len(cp), n)], rng.integers(0, cfg.campaigns, n)),
        np.where(own[2], pp[rng.integers(0, len(pp), n)], rng.integers(0, cfg.pages, n)),
    )


def _user_events(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    world: _World,
    names: dict[str, list[str]],
    uid: str,
    plan: _UserPlan,
    rate_scale: float,
) -> tuple[list[tuple[int, str, dict[str, PropValue]]], bool, str]:
    """All events of one user (window and the 14 days after), `converts`, hidden state at end."""
    span, seg, traj = cfg.days, plan.seg, plan.traj
    state_end = state_at(traj, span)
    start = max(plan.signup, 0.0)
    sess = sessions(
        rng, traj, start, span + 14.0, rate_scale * plan.activity, cfg.session_gap_shape
    )
    n_in = sum(1 for t in sess if t <= span)
    sess += [float(x) for x in rng.uniform(start, span, size=max(0, cfg.min_sessions - n_in))]
    kinds = [0] * len(sess)  # 0 plain, 1 intent (circles one item), 2 buying
    pool = world.item_pools[seg]
    intent_item = int(
        pool[min(int(np.searchsorted(world.item_cdf[seg], rng.random())), len(pool) - 1)]
    )
    intent = state_end != "churned" and rng.random() < sigmoid(world.propensity[seg] - 0.7)
    if intent:
        sess.append(span - rng.uniform(0.0, 2.0))
        kinds.append(1)
    logit = world.propensity[seg] + 1.8 * intent + _CONVERT_STATE[state_end] - 0.4
    converts = bool(rng.random() < sigmoid(logit))
    if converts:
        sess.append(span + rng.uniform(0.01, 7.0))
        kinds.append(2)

    # session lengths (S,), then every per-event draw at once (N,)
    states = [state_at(traj, t) for t in sess]
    lens = np.array([LEN[st] for st in states]) * cfg.events_per_session
    # a user on the way out is distracted: slower clicks, shorter dwell (invisible to counts)
    fade = np.array([st in ("fading", "churned") for st in states], dtype=np.float64)
    n_s = np.maximum(rng.geometric(1.0 / lens), np.where(np.array(kinds) > 0, 3, 1))
    n = int(n_s.sum())
    first = np.cumsum(n_s) - n_s  # (S,) index of each session's first event
    sid = np.repeat(np.arange(len(sess)), n_s)  # (N,)
    types = rng.choice(len(EVENT_TYPES), size=n, p=world.type_probs[seg])
    own = rng.random(size=(3, n)) < cfg.in_segment
    zipf = np.minimum(np.searchsorted(world.item_cdf[seg], rng.random(n)), len(pool) - 1)
    items = np.where(own[0], pool[zipf], rng.integers(0, cfg.items, size=n))
    # browsing repeats: an event looks at the previous event's item again (not across sessions)
    rep = (rng.random(n) < 0.3) & (np.arange(n) != first[sid])
    src = np.maximum.accumulate(np.where(rep, 0, np.arange(n)))
    items = items[src]
    after = (
        np.zeros(n, dtype=bool) if plan.switch is None else np.array(sess)[sid] >= plan.switch[0]
    )
    alt = _switched(cfg, world, plan, n, src) if after.any() else None
    if alt is not None:
        types, items = np.where(after, alt[0], types), np.where(after, alt[1], items)
    for k, kind in enumerate(kinds):
        a, b = int(first[k]), int(first[k] + n_s[k])
        if kind == 1:  # purchase intent: the session circles one item, ending in a cart add
            mid = a + (b - a) // 2
            items[mid:b] = intent_item
            types[mid:b] = _T["item_view"]
            types[b - 1] = _T["add_to_cart"]
        elif kind == 2:
            types[b - 1] = _T["purchase"]
            if intent:
                items[b - 1] = intent_item
    cp, pp = world.campaign_pools[seg], world.page_pools[seg]
    camps = np.where(own[1], cp[rng.integers(0, len(cp), n)], rng.integers(0, cfg.campaigns, n))
    pages = np.where(own[2], pp[rng.integers(0, len(pp), n)], rng.integers(0, cfg.pages, n))
    if alt is not None:
        camps, pages = np.where(after, alt[2], camps), np.where(after, alt[3], pages)
    fz = fade[sid]  # (N,)
    gaps = np.exp(rng.normal(np.log(25.0) + 1.2 * fz, 1.0, size=n)) * 1000.0  # ms in a session
    gaps[first] = 0.0
    csum = np.cumsum(gaps)
    offs = csum - csum[first][sid]
    t0_ms = cfg.end_ms - int(span * DAY_MS)
    ts = t0_ms + (np.array(sess)[sid] * DAY_MS + offs).astype(np.int64)
    buying = np.array(kinds)[sid] == 2
    ts = np.where(buying & (ts <= cfg.end_ms), cfg.end_ms + 1 + np.arange(n), ts)
    dwell = np.round(np.exp(rng.normal(2.5 - 1.2 * fz, 1.0, size=n)), 1).tolist()
    device = DEVICES[int(rng.integers(0, len(DEVICES)))]
    dev = np.where(rng.random(n) < 0.1, rng.integers(0, len(DEVICES), n), DEVICES.index(device))
    country = COUNTRIES[int(rng.choice(len(COUNTRIES), p=world.country_probs[seg]))]

    adv_item, adv_camp = world.item_advertiser[items].tolist(), world.campaign_advertiser[camps]
    adv_camp_l, price = adv_camp.tolist(), world.item_price[items].tolist()
    items_l, camps_l, pages_l, dev_l = items.tolist(), camps.tolist(), pages.tolist(), dev.tolist()
    out: list[tuple[int, str, dict[str, PropValue]]] = []
    for j, (t, ty) in enumerate(zip(ts.tolist(), types.tolist(), strict=True)):
        etype = EVENT_TYPES[ty]
        props: dict[str, PropValue] = {}
        for name in _PROPS_OF[etype]:
            if name == "item":
                props["item"] = names["item"][items_l[j]]
            elif name == "advertiser":
                a_id = adv_item[j] if "item" in _PROPS_OF[etype] else adv_camp_l[j]
                props["advertiser"] = names["advertiser"][a_id]
            elif name == "campaign":
                props["campaign"] = names["campaign"][camps_l[j]]
            elif name == "page":
                props["page"] = names["page"][pages_l[j]]
            elif name == "device":
                props["device"] = DEVICES[dev_l[j]]
            elif name == "country":
                props["country"] = country
            elif name == "price":
                props["price"] = price[j]
            elif name == "dwell_s":
                props["dwell_s"] = dwell[j]
        out.append((t, etype, props))
    out.sort(key=lambda r: r[0])
    return out, converts, state_end


def generate(cfg: SyntheticConfig) -> SyntheticDataset:
    """Draw a data set of `cfg`'s sizes. Deterministic under (`world_seed`, `seed`) and the
    rest of `cfg`.

    Returns:
        events up to ``end_ms`` sorted by (ts_ms, event_id), per-user truth, and the
        events of the 14 days after ``end_ms`` (what the outcomes were read from).
    """
    world = _make_world(cfg)
    names = {
        "item": [f"i{k}" for k in range(cfg.items)],
        "campaign": [f"c{k}" for k in range(cfg.campaigns)],
        "advertiser": [f"a{k}" for k in range(cfg.advertisers)],
        "page": [f"p{k}" for k in range(cfg.pages)],
    }
    rngs = [np.random.default_rng([cfg.seed, cfg.first_user + i, 104729]) for i in range(cfg.users)]
    plans, rate_scale = _plan_users(cfg, rngs)
    events: list[Event] = []
    future: list[Event] = []
    truth: dict[str, UserTruth] = {}
    end_future_ms = cfg.end_ms + SYNTHETIC_FUTURE_MS
    for i, (rng, plan) in enumerate(zip(rngs, plans, strict=True)):
        uid = f"u{cfg.first_user + i:06d}"
        rows, converts, state = _user_events(rng, cfg, world, names, uid, plan, rate_scale)
        churns = True
        prefix = f"s{cfg.seed}-{uid}-e"
        for k, (ts, etype, props) in enumerate(rows):
            if ts > end_future_ms:
                break
            ev = Event(uid, f"{prefix}{k:05d}", ts, etype, props)
            if ts <= cfg.end_ms:
                events.append(ev)
            else:
                future.append(ev)
                churns = False
        sw = plan.switch
        at = None if sw is None else cfg.end_ms - int((cfg.days - sw[0]) * DAY_MS)
        lifecycle = "fading" if state == "slowing" else state  # equally quiet from outside
        truth[uid] = UserTruth(uid, plan.seg, lifecycle, converts, churns, at,
                               None if sw is None else sw[1], state, plan.activity)  # fmt: skip
    events.sort(key=Event.sort_key)
    future.sort(key=Event.sort_key)
    return SyntheticDataset(config=cfg, events=events, truth=truth, future_events=future)
