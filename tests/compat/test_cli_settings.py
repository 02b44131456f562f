"""``openpods serve|api|spawner|health --help`` list every setting with its OPENPODS_* variable, unit and default,
and every setting is an option that reaches ``Settings`` (issue 10, item 9)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.testing import CliRunner

from openpods import cli
from openpods.config import Settings, field_env, field_unit

ROLE_COMMANDS = ("serve", "api", "spawner", "health")
# A wide terminal: Rich would otherwise wrap help text, possibly inside a long variable name.
WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400", "NO_COLOR": "1"}


def _help(command: str) -> str:
    result = CliRunner().invoke(cli.app, [command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", result.output)


@pytest.mark.parametrize("command", ROLE_COMMANDS)
def test_help_names_every_setting_with_its_variable(command: str) -> None:
    text = _help(command)
    for name in Settings.model_fields:
        env = field_env(name)
        assert f"Env: {env}." in text, f"{command} --help does not show {env}"
        flag = cli._OPTION_FLAGS.get(name, (f"--{name.replace('_', '-')}",))[0].split("/")[0]
        assert flag in text, f"{command} --help has no option {flag} for {name}"


def test_help_shows_units_and_defaults() -> None:
    text = _help("serve")
    assert "Unit: seconds. Env: OPENPODS_STUCK_DEADLINE_SEC. Default: 180.0." in text
    assert "Unit: MiB. Env: OPENPODS_MEM_MAX. Default: 12288." in text
    assert "Unit: millicpu (1000 = 1 CPU). Env: OPENPODS_CPU_MIN. Default: 250." in text
    assert "Unit: bytes. Env: OPENPODS_LOGS_MAX_BYTES. Default: 10485760." in text
    # Square brackets in descriptions survive (Rich markup would eat "[[tenants]]" and "[env …]").
    assert "(TOML [[tenants]])" in text
    for name, info in Settings.model_fields.items():
        if info.annotation in (int, float) and name not in ("port",):
            assert field_unit(name), f"numeric setting {name} has no unit"


def test_every_option_reaches_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(settings: Settings, roles: tuple[str, ...]) -> None:
        seen["settings"], seen["roles"] = settings, roles

    monkeypatch.setattr("openpods.server.run", fake_run)
    monkeypatch.setenv("OPENPODS_PORT", "8123")  # not given as an option: the environment applies
    result = CliRunner().invoke(
        cli.app,
        [
            "serve", "--token-ttl-sec", "120", "--image-allow-list", "a/b", "--image-allow-list", "c/d",
            "--no-proxy", "--runtime", "none", "--health-interval-sec", "0.5", "--bus", "memory",
            "--tenants", '[{"tenant_id": "extra"}]', "--no-redirect-http-to-https", "--cpu-max", "8000",
        ],
        env=WIDE,
    )
    assert result.exit_code == 0, result.output
    settings: Settings = seen["settings"]
    assert seen["roles"] == ("api", "spawner", "health", "proxy")
    assert settings.token_ttl_sec == 120
    assert settings.image_allow_list == ["a/b", "c/d"]
    assert settings.proxy_enabled is False and settings.redirect_http_to_https is False
    assert settings.runtime == "none" and settings.health_interval_sec == 0.5 and settings.cpu_max == 8000
    assert [t.tenant_id for t in settings.tenants] == ["extra"]
    assert settings.port == 8123
    assert settings.compute_queues == ["default"]  # not given: the embedded default


def test_bad_option_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("openpods.server.run", lambda settings, roles: None)
    bad_choice = CliRunner().invoke(cli.app, ["api", "--runtime", "lxc"], env=WIDE)
    assert bad_choice.exit_code == 2
    bad_json = CliRunner().invoke(cli.app, ["health", "--tenants", "not json"], env=WIDE)
    assert bad_json.exit_code != 0
