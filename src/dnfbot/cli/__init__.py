"""The `dnfbot` command line: small verbs, `--json` everywhere.

Every verb is in this package, one module per group (GROUPS below names them all); the top-level verbs are in
ask.py (search, ask, chat, generate, config) and serve.py (serve, ui). A group's module is imported when the group
is used — `dnfbot --help` imports none of them, and a verb imports torch & co. only inside its body — and an
import error in one is an error, never a silently missing group (tests/test_architecture.py runs every verb's --help).
"""

from __future__ import annotations

import importlib
import os
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
    "feedback": ("feedback", "The answer log and players' feedback: stats, training/eval exports, purge."),
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


INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug, not the user's input (DnfbotError and usage errors exit 2)


def main() -> None:
    """Run the CLI behind one error boundary: every failure a user can cause is one line on stderr and a stable
    exit code (2: usage, input, index, output; 130: interrupted); a traceback only with --debug or
    DNFBOT_DEBUG=1 (then exceptions propagate as they are)."""
    args = sys.argv[1:]
    debug = os.environ.get("DNFBOT_DEBUG", "") not in ("", "0")
    if args[:1] == ["--debug"]:
        args, debug = args[1:], True
    try:
        rc = app(args=args, prog_name="dnfbot", standalone_mode=False)
    except typer.Exit as e:  # before the click errors: Exit is not one, but keep the order obvious
        sys.exit(e.exit_code)
    except BaseException as e:
        if debug and not isinstance(e, SystemExit):
            raise
        code, line = explain(e)
        if line is None:
            raise
        if line:
            typer.echo(line, err=True)
        sys.exit(code)
    if rc == 130:  # typer turns Ctrl-C into a silent exit code 130 (standalone_mode=False)
        typer.echo("aborted (interrupted)", err=True)
    sys.exit(rc if isinstance(rc, int) else 0)


def _click_exception_types() -> tuple[type, ...]:
    # typer 0.2x bundles its own copy of click (typer._click): its usage errors are not click.ClickException,
    # so both bases are looked up — typer's through a public class of its own, never a private import.
    import click

    bundled = next((c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"), None)
    return tuple({click.ClickException, *([bundled] if bundled else [])})


def explain(e: BaseException) -> tuple[int, str | None]:
    """(exit code, the one line to print) for an exception leaving a command; line None: let it propagate."""
    if isinstance(e, SystemExit):
        return (e.code if isinstance(e.code, int) else 1), None
    if isinstance(e, DnfbotError):
        return e.exit_code, f"error: {one_line(str(e))}"
    if isinstance(e, KeyboardInterrupt) or type(e).__name__ == "Abort":
        return 130, "aborted (interrupted)"
    if isinstance(e, _click_exception_types()):
        if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed already: that is the answer
            return getattr(e, "exit_code", 2), ""
        return getattr(e, "exit_code", 2) or 2, f"error: {one_line(usage_message(e))}"
    if isinstance(e, OSError):
        return 2, f"error: {one_line(os_message(e))}"
    if isinstance(e, MemoryError):
        return 2, "error: out of memory (try a smaller batch, corpus or model)"
    if isinstance(e, RecursionError):
        return 2, "error: input nested too deeply"
    if isinstance(e, Exception):
        what = f"{type(e).__name__}: {one_line(str(e))}" if str(e) else type(e).__name__
        return INTERNAL_ERROR, f"error: internal error ({what}); run with DNFBOT_DEBUG=1 for the traceback"
    return 1, None


def usage_message(e: Exception) -> str:
    """click's message plus where to look: "No such option: --bogus (see 'dnfbot search --help')"."""
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    ctx = getattr(e, "ctx", None)
    if ctx is not None and getattr(ctx, "command_path", None):
        return f"{msg} (see '{ctx.command_path} --help')"
    return msg


def os_message(e: OSError) -> str:
    """An OSError as "PATH: reason" (disk full, permission, a folder where a file was expected, …)."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename} → {e.filename2}: {reason}"
    if e.filename is not None:
        return f"{e.filename}: {reason}"
    return reason


def one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"
