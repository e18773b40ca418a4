"""The `persona` command's own behaviour: help on every subcommand, clean errors."""

from __future__ import annotations

from typing import Any

import pytest

from services.cli import build_parser, main
from services.stack import free_ports


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")  # noqa: SLF001
    names = list(sub.choices)  # type: ignore[union-attr]
    assert {"up", "produce", "ingest", "window", "train", "refresh", "serve"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: persona" in capsys.readouterr().out


def test_unreachable_store_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)  # nothing listens there
    assert main(["window", "u1", "--redis", f"redis://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona window: ConnectionError") and "\n" not in err


def test_train_flags_reach_the_spec_and_the_torchrun_children() -> None:
    """--count-top / --counts-in-vector / --count-hidden / --residual set ModelConfig's
    count_top / counts_in_vector / count_hidden and ObjectiveConfig.w_residual (defaults:
    16 counted, not in the vector, no MLP, residual 3) and are passed to each rank."""
    from services.cli.train_launch import child_argv
    from services.cli.train_spec import train_spec

    def spec(*flags: str) -> Any:
        return train_spec(build_parser().parse_args(["train", "--synthetic", *flags]))

    off = spec()
    assert off.model.count_top == 16 and not off.model.counts_in_vector
    assert off.model.count_hidden == 0 and off.objectives.w_residual == 3.0
    flags = ["--count-top", "8", "--counts-in-vector", "--count-hidden", "64", "--residual", "0"]
    on = build_parser().parse_args(["train", "--synthetic", *flags, "--nproc", "2"])
    got = train_spec(on)
    assert (got.model.count_top, got.model.counts_in_vector, got.model.count_hidden) == (
        8,
        True,
        64,
    )
    assert got.objectives.w_residual == 0.0
    argv = child_argv(on)
    assert "--nproc" not in argv and "--counts-in-vector" in argv
    for flag, value in (("--count-top", "8"), ("--count-hidden", "64"), ("--residual", "0.0")):
        assert argv[argv.index(flag) + 1] == value
    assert train_spec(build_parser().parse_args(argv)) == got
    for bad, why in (
        (["--count-top", "0", "--count-hidden", "64"], "needs --count-top"),
        (["--count-top", "0", "--counts-in-vector"], "needs --count-top"),
        (["--residual", "-1"], "W >= 0"),
        (["--count-top", "-1"], "N >= 0"),
        (["--count-dims", "64"], "0 <= N < 64"),
        (["--count-top", "0", "--count-dims", "8"], "--count-top N > 0"),
    ):
        with pytest.raises(SystemExit, match=why):
            spec(*bad)
    more = ["train", "--synthetic", "--manner-bag", "--calibrate-crossfit", "0", "--nproc", "2",
            "--count-dims", "16"]  # fmt: skip
    on = build_parser().parse_args(more)
    assert off.train.calibrate_crossfit == 5 and not off.model.manner_bag
    assert off.model.count_dims == 0 and train_spec(on).model.count_dims == 16
    assert train_spec(on).train.calibrate_crossfit == 0 and train_spec(on).model.manner_bag
    argv = child_argv(on)
    assert "--manner-bag" in argv and argv[argv.index("--calibrate-crossfit") + 1] == "0"
    assert argv[argv.index("--count-dims") + 1] == "16"
