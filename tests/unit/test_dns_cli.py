"""``atoll dns serve`` refuses bad flags with a clear message before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from atoll.cli.main import app

BASE = ["dns", "serve", "--control-plane", "127.0.0.1:1", "--insecure"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--cluster", "eu1", "--egress-address", "nope"],
            "egress_address: value is not a valid IPv4 or IPv6 address",
        ),
        (["--cluster", "Not A Label", "--egress-address", "127.0.1.2"], "cluster"),
    ],
)
def test_bad_egress_settings_are_refused(tmp_path: Path, flags: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*BASE, "--state-dir", str(tmp_path / "s"), *flags])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "s").exists()  # refused before anything was created
