"""What the verbs share: flags generated from declared option dataclasses, the flags that open the guide RAG, and
`--json` output.

    @train.command("sft")
    @with_options(SFTOptions)          # one flag per field, its help from the field
    def train_sft(data: Path = typer.Option(...), options: dict = None): ...

The command receives the generated flags that were given as `options` (name → value; flags left out are absent),
so precedence over a config file stays the library's business (train/options.py).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from dnfbot.corpus.vocabulary import CATEGORY1, CATEGORY2
from dnfbot.options import REQUIRED, Declared, declared, flag_decls, option

CONFIG_HELP = "YAML settings file (see `dnfbot config`)"
JSON = typer.Option(False, "--json", help="machine-readable output on stdout")
CONFIG = typer.Option(None, "--config", help=CONFIG_HELP)
RUN_CONFIG = typer.Option(
    None, "--config", help="YAML run config (configs/*.yaml) or a run's summary.json; flags win over it"
)
CORPUS = typer.Option(
    None, "--corpus", help="guide JSON, JSONL or folder; repeatable (default: the configured corpus)"
)


def group() -> typer.Typer:
    """A command group; its help text is in dnfbot.cli.GROUPS."""
    return typer.Typer(no_args_is_help=True)


def show(result: Any, json_out: bool, human: Callable[[Any], None]) -> None:
    """`--json`: the result as one JSON line on stdout; else the human rendering."""
    from dnfbot.console import emit_json

    emit_json(result) if json_out else human(result)


# --- the flags that open the guide RAG (rag.open_rag's arguments) --------------------------------------------


@dataclass
class IndexFlags:
    index_dir: Path | None = option(None, "index folder (default: $DNFBOT_HOME/index or the user data dir)")
    config: Path | None = option(None, CONFIG_HELP)


@dataclass
class SearchFlags(IndexFlags):
    mode: str | None = option(None, "sparse | dense | hybrid (default: hybrid when a dense index exists)")


@dataclass
class AnswerFlags(SearchFlags):
    backend: str | None = option(None, "answer generator: extractive (default) | hf | openai")
    model: str | None = option(None, "hf: local model path; openai: model name")
    adapter: str | None = option(None, "hf: LoRA adapter dir")
    base_url: str | None = option(None, "openai: server URL (else OPENAI_BASE_URL)")
    load_in_4bit: bool | None = option(
        None, "hf: load the model in 4-bit (bitsandbytes)", flag="--4bit/--no-4bit"
    )


def invocation() -> str:
    """This process's command line, shell-quoted (benchmarks print the command that made their table)."""
    import shlex
    import sys

    return "dnfbot " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@dataclass
class QuestionFlags:
    """What `search` and `ask` are asked: the filters, or a batch file instead of one question."""

    category1: str | None = option(None, " | ".join(CATEGORY1))
    category2: str | None = option(None, f"{' | '.join(CATEGORY2)} (with {CATEGORY1[0]})")
    category3: str | None = option(None, "board, e.g. '[레이드] 아스라한 : 무의 장막' or a class name")
    queries: Path | None = option(
        None, 'batch mode: JSONL file of {"question": ...}; one JSON line out per query'
    )

    def open(self, question: str | None, options: dict) -> tuple[Any, Any, list[str]]:
        """(the guide RAG opened with `options`, the filters, the questions)."""
        from dnfbot.errors import InputError
        from dnfbot.rag import open_rag, read_questions
        from dnfbot.retrieval.sparse import Filters

        if self.queries:
            questions = read_questions(self.queries)
        elif question is None:
            raise InputError("give a question or --queries FILE")
        else:
            questions = [question]
        filters = Filters(self.category1 or None, self.category2 or None, self.category3 or None)
        return open_rag(**options), filters, questions


def pick(options: dict, cls: type) -> dict:
    """The entries of `options` that are fields of `cls`."""
    names = {d.name for d in declared(cls)}
    return {k: v for k, v in options.items() if k in names}


def as_flags(options: dict, cls: type) -> list[str]:
    """The command-line flags that give `options` again (to hand them to another process)."""
    args = []
    for d in declared(cls):
        value = options.get(d.name)
        if value is None:
            continue
        on, _, off = flag_decls(d)[0].partition("/")
        args += [on if value else off] if isinstance(value, bool) else [on, str(value)]
    return args


# --- flags from declared options ---------------------------------------------------------------------------


def with_options(*classes: type, skip: Iterable[str] = (), into: str = "options") -> Callable:
    """Add one flag per declared field of `classes` (except `skip`) to a command; it receives the given ones as
    `into` (a dict). Required fields become required flags."""
    skip = set(skip)

    def wrap(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()
            if p.name != into
        ]
        taken = {p.name for p in own}
        decls: dict[str, Declared] = {}
        for cls in classes:
            for d in declared(cls):
                if d.cli and d.name not in skip and d.name not in decls:
                    if d.name in taken:
                        raise TypeError(f"{fn.__name__}: flag '{d.name}' is both a parameter and an option")
                    decls[d.name] = d
        generated = [_parameter(d) for d in decls.values()]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            given = {}
            for name, d in decls.items():
                value = kwargs.pop(name)
                if value is not None:
                    given[name] = d.parse(value) if d.parse and isinstance(value, str) else value
            return fn(**kwargs, **{into: given})

        params = own + generated
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap


def _parameter(d: Declared) -> inspect.Parameter:
    default = ... if d.default is REQUIRED else None  # None: not given, the option's own default applies
    info = typer.Option(
        default, *flag_decls(d), help=_help(d), rich_help_panel=getattr(d.owner, "panel", None)
    )
    return inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=_flag_type(d))


def _flag_type(d: Declared) -> Any:
    if d.parse is not None:
        return str | None
    tp = d.type
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    base = args[0]
    if typing.get_origin(base) is list:
        return base
    return base | None


def _is_union(tp: Any) -> bool:
    import types

    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union


def _help(d: Declared) -> str:
    value = d.default
    if value is REQUIRED or value is None or value == "" or value == [] or value == {}:
        return d.help
    if isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, list):
        text = ",".join(map(str, value))
    else:
        text = str(value)
    return f"{d.help} (default: {text})"
