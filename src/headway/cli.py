"""The ``headway`` console script: ``run``, ``demo`` and ``serve-fake``.

Settings come from, in order of precedence: command-line flags, ``HEADWAY_*``
environment variables (``HEADWAY_RPM``, ``HEADWAY_BASE_URL``, ... for ``run``), a
``headway.toml`` (``--config PATH``, ``HEADWAY_CONFIG``, or ``./headway.toml`` when it
exists; one table per command: ``[run]``, ``[demo]``, ``[serve-fake]``), then defaults.
See ``docs/cli.md``.

Exit codes: 0 every request succeeded; 1 some failed permanently; 2 usage error (a
one-line message, never a traceback); 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from headway import __version__
from headway._cli import common
from headway._cli.batches import batches
from headway._cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from headway._cli.common import UsageError as UsageError
from headway._cli.config import _load_config
from headway._cli.run import run
from headway.errors import ConfigurationError

if TYPE_CHECKING:
    from headway._cli.demo import check_exactly_once as check_exactly_once
    from headway._cli.demo import demo_chaos as demo_chaos
    from headway._cli.demo import write_demo_input as write_demo_input
    from headway._cli.serve import _serve as _serve

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "cli", "main"]

#: Commands imported when they are called or listed (``headway run`` needs neither):
#: name -> (module, attribute).
_LAZY_COMMANDS = {
    "demo": ("headway._cli.demo", "demo"),
    "serve-fake": ("headway._cli.serve", "serve_fake"),
}

#: Names that live in headway._cli and stay importable from here (loaded on use).
_REEXPORTS = {
    "check_exactly_once": "headway._cli.demo",
    "demo_chaos": "headway._cli.demo",
    "write_demo_input": "headway._cli.demo",
    "_serve": "headway._cli.serve",
}


def __getattr__(name: str) -> Any:
    if name in _REEXPORTS:
        return getattr(importlib.import_module(_REEXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Group(click.Group):
    """A group whose errors are one line on stderr, never a traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        **extra: Any,
    ) -> NoReturn:
        extra.pop("standalone_mode", None)
        common.ARGV[:] = list(args) if args is not None else sys.argv[1:]
        try:
            rv = super().main(
                args=args, prog_name=prog_name or "headway", standalone_mode=False, **extra
            )
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("headway: aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(EXIT_OK)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"headway: error: {message}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except ConfigurationError as exc:
            click.echo(f"headway: error: {' '.join(str(exc).split())}", err=True)
            sys.exit(EXIT_USAGE)
        except OSError as exc:
            click.echo(f"headway: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("headway: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _LAZY_COMMANDS:
            module, attr = _LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group("headway", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="headway")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HEADWAY_CONFIG",
    help="Settings file (TOML; one table per command). Default: ./headway.toml if present.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """headway: call HTTP APIs at the full speed a provider allows, and never faster.

    Start with `headway demo` (no network, no key needed).
    """
    explicit = config_path is not None
    path = config_path if config_path is not None else Path("headway.toml")
    ctx.default_map = _load_config(path, explicit=explicit, group=cli, ctx=ctx)


cli.add_command(run)
cli.add_command(batches)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script's entry point."""
    cli.main(args=argv, prog_name="headway")


if __name__ == "__main__":  # pragma: no cover
    main()
