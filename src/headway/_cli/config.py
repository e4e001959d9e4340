"""The ``headway.toml`` settings file: one table per command, checked against its options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from headway._cli.common import _fail

__all__: list[str] = []  # internal: the headway group loads the file with _load_config


def _load_config(
    path: Path, *, explicit: bool, group: click.Group, ctx: click.Context
) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            import tomllib  # only when there is a file to read

            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            _fail(f"config file {path} does not exist")
        return {}
    except OSError as exc:
        _fail(f"cannot read config file {path}: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        _fail(f"config file {path} is not valid TOML: {exc}")
    commands: dict[str, click.Command] = {}
    for name in group.list_commands(ctx):  # every command, those loaded on use too
        command = group.get_command(ctx, name)
        if command is not None:
            commands[name] = command
    out: dict[str, dict[str, Any]] = {}
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for key, value in data.items():
        if isinstance(value, dict) and key not in commands:
            _fail(f"{path}: unknown table [{key}] (expected one of: {', '.join(sorted(commands))})")
    for name, cmd in commands.items():
        params = {p.name: p for p in cmd.params if p.name and isinstance(p, click.Option)}
        table = {**shared, **data.get(name, {})}
        section: dict[str, Any] = {}
        for key, value in table.items():
            pname = key.replace("-", "_")
            if pname not in params:
                if key in data.get(name, {}):
                    _fail(f"{path}: unknown setting '{key}' in [{name}]")
                continue  # a shared key another command uses
            section[pname] = value
        out[name] = section
    unknown = [k for k in shared if not any(k.replace("-", "_") in s for s in out.values())]
    if unknown:
        _fail(f"{path}: unknown setting '{unknown[0]}'")
    return out
