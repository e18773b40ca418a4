"""The shared Lua prelude goes in front of every script, after a `#!lua` flags line."""

from __future__ import annotations

from importlib import resources

from services.store.scripts import PRELUDE, with_prelude


def test_prelude_goes_after_the_flags_line_and_before_plain_scripts() -> None:
    pre = "local function f() return 1 end\n"
    flagged = with_prelude("#!lua flags=no-writes\nreturn f()\n", pre)
    assert flagged == "#!lua flags=no-writes\n" + pre + "return f()\n"
    assert with_prelude("return f()\n", pre) == pre + "return f()\n"


def test_every_script_that_uses_the_prelude_does_not_define_it_again() -> None:
    folder = resources.files("services.store")
    names = [p.name for p in folder.iterdir() if p.name.endswith(".lua") and p.name != PRELUDE]
    for name in names:
        src = folder.joinpath(name).read_text()
        assert "local function score_block" not in src, name
        assert "local function audience_prefix" not in src, name
    used = [n for n in names if "score_block(" in folder.joinpath(n).read_text()]
    assert sorted(used) == ["forget.lua", "write_vectors.lua"]
