"""The `persona` command's own behaviour: help on every subcommand, clean errors."""

from __future__ import annotations

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
    """--count-top / --count-hidden set ModelConfig.count_top / count_hidden (off unless
    given; the MLP only over counts) and are passed to each rank."""
    from services.cli.encoder_cmds import _train_spec
    from services.cli.train_launch import child_argv

    off = build_parser().parse_args(["train", "--synthetic"])
    on = build_parser().parse_args(["train", "--synthetic", "--count-top", "16", "--nproc", "2"])
    assert _train_spec(off).model.count_top == 0
    assert _train_spec(on).model.count_top == 16
    argv = child_argv(on)
    assert argv[argv.index("--count-top") + 1] == "16" and "--nproc" not in argv
    mlp = build_parser().parse_args(["train", "--synthetic", "--count-top", "16",
                                     "--count-hidden", "64", "--nproc", "2"])  # fmt: skip
    assert _train_spec(off).model.count_hidden == 0 and _train_spec(mlp).model.count_hidden == 64
    argv = child_argv(mlp)
    assert argv[argv.index("--count-hidden") + 1] == "64"
    alone = build_parser().parse_args(["train", "--synthetic", "--count-hidden", "64"])
    with pytest.raises(SystemExit, match="needs --count-top"):
        _train_spec(alone)
    more = ["train", "--synthetic", "--manner-bag", "--calibrate-crossfit", "0", "--nproc", "2"]
    on = build_parser().parse_args(more)
    assert _train_spec(off).train.calibrate_crossfit == 5 and not _train_spec(off).model.manner_bag
    assert _train_spec(on).train.calibrate_crossfit == 0 and _train_spec(on).model.manner_bag
    argv = child_argv(on)
    assert "--manner-bag" in argv and argv[argv.index("--calibrate-crossfit") + 1] == "0"
