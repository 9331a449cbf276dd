"""The `dnfbot` command line: small verbs, `--json` everywhere.

Each area contributes its verbs through a module with `register(app, groups)`; modules are imported at start-up
but must not import torch & co. at module level (import inside the command), so `dnfbot --help` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

from dnfbot.errors import DnfbotError

app = typer.Typer(
    name="dnfbot",
    help="던전앤파이터 지식 챗봇 툴킷 — corpus, RAG, data synthesis, SFT/RM/PPO training, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

GROUPS = {
    "index": "Build and inspect the retrieval index.",
    "corpus": "Inspect and clean a corpus.",
    "eval": "Evaluate retrieval, answers and models.",
    "bench": "Benchmarks (results go to docs/benchmarks.md).",
    "synth": "Synthesise training data with an LLM (or offline).",
    "data": "Build SFT / reward / PPO datasets.",
    "model": "Create and inspect models.",
    "train": "Train: SFT, reward model, PPO, embedder.",
    "reward": "Score responses with a reward model.",
    "plot": "Draw training curves to PNG.",
    "report": "Reports from training runs.",
}
groups: dict[str, typer.Typer] = {}
for _name, _help in GROUPS.items():
    groups[_name] = typer.Typer(help=_help, no_args_is_help=True)
    app.add_typer(groups[_name], name=_name)

# Areas that add verbs. A module that is not there yet is skipped; one that fails to import is an error.
AREA_MODULES = [
    "dnfbot.commands",  # index, search, ask, chat, corpus, eval retrieval, bench retrieval, config
    "dnfbot.synth.cli",
    "dnfbot.datasets.cli",
    "dnfbot.train.cli",
    "dnfbot.train.ppo_cli",
    "dnfbot.retrieval.dense_cli",
    "dnfbot.serve.cli",
    "dnfbot.feedback.cli",  # feedback stats|export|purge, bench feedback
]


def _register_areas() -> None:
    for name in AREA_MODULES:
        if not _find_spec_safe(name):
            continue
        importlib.import_module(name).register(app, groups)


def _find_spec_safe(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def main() -> None:
    _register_areas()
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
