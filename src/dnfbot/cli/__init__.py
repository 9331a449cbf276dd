"""The `dnfbot` command line: small verbs, `--json` everywhere.

Every verb is in this package, one module per group (GROUPS below names them all); the top-level verbs are in
ask.py (search, ask, chat, generate, config) and serve.py (serve, ui). A group's module is imported when the group
is used — `dnfbot --help` imports none of them, and a verb imports torch & co. only inside its body — and an
import error in one is an error, never a silently missing group (tests/test_architecture.py runs every verb's --help).
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

from dnfbot.cli import ask, serve
from dnfbot.errors import DnfbotError

# group → (module in dnfbot.cli that defines it, help)
GROUPS: dict[str, tuple[str, str]] = {
    "index": ("index", "Build and inspect the retrieval index."),
    "corpus": ("corpus", "Inspect and clean a corpus."),
    "eval": ("eval", "Evaluate retrieval, answers and models."),
    "bench": ("bench", "Benchmarks (results go to docs/benchmarks.md)."),
    "synth": ("synth", "Synthesise training data with an LLM (or offline)."),
    "data": ("data", "Build SFT / reward / PPO / embedder datasets."),
    "model": ("model", "Create and inspect models."),
    "train": ("train", "Train: SFT, reward model, PPO, embedder."),
    "reward": ("train", "Score responses with a reward model."),
    "plot": ("report", "Draw training curves to PNG."),
    "report": ("report", "Reports from training runs."),
}


class Commands(TyperGroup):
    """The top-level command: its own verbs, plus the groups of GROUPS, each built on first use."""

    listing = False  # True while the top-level help is drawn: groups then need only their name and help

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return [*super().list_commands(ctx), *(g for g in GROUPS if g not in self.commands)]

    def get_command(self, ctx: typer.Context, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in GROUPS:
            return cmd
        if self.listing:
            return TyperGroup(name=name, help=GROUPS[name][1])
        cmd = load_group(name)
        self.add_command(cmd, name)
        return cmd

    def format_help(self, ctx: typer.Context, formatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


def load_group(name: str):
    """The click command of group `name`, from its module."""
    module, help_text = GROUPS[name]
    sub = getattr(importlib.import_module(f"dnfbot.cli.{module}"), name)
    cmd = typer.main.get_group(sub)  # a group even when it has one verb (synth qa)
    cmd.name, cmd.help = name, help_text
    return cmd


app = typer.Typer(
    name="dnfbot",
    help="던전앤파이터 지식 챗봇 툴킷 — corpus, RAG, data synthesis, SFT/RM/PPO training, serving.",
    cls=Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(ask.commands)
app.add_typer(serve.commands)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
    except DnfbotError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
