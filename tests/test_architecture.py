"""The house rules of docs/architecture.md, checked on the source: which layer may import which, no private names
across modules, and a command line whose every verb is reachable and starts without the heavy libraries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dnfbot.cli import GROUPS, app

SRC = Path(__file__).resolve().parents[1] / "src" / "dnfbot"

# Modules of issue 11's answer path that still import private names of their siblings (being reworked apart).
PRIVATE_IMPORT_EXCEPTIONS = {
    ("dnfbot.serve.backends", "dnfbot.generate.extractive"),
    ("dnfbot.corpus.doctor", "dnfbot.corpus.clean"),
}


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = ("dnfbot", *path.relative_to(SRC).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, ast.parse(path.read_text(encoding="utf-8"), str(path))))
    return out


def _imports(tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every dnfbot import, at any depth (lazy imports inside functions count)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dnfbot"):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("dnfbot")]
    return found


def _area(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


# docs/architecture.md: each area may import its own layer and the ones below, never one above.
LAYERS = [
    {"", "errors", "io", "options", "console", "formats", "config", "models"},
    {"corpus"},
    {"retrieval"},
    {"generate"},
    {"rag", "conversation"},
    {"synth", "datasets"},
    {"train", "eval", "feedback"},
    {"serve", "chat"},
    {"bench"},
    {"cli", "__main__"},
]
LAYER = {area: i for i, areas in enumerate(LAYERS) for area in areas}


def test_every_area_has_a_layer_and_imports_only_downwards():
    bad = []
    for name, tree in _modules():
        assert _area(name) in LAYER, f"{name}: add its area to LAYERS (and to docs/architecture.md)"
        for line, target, _ in _imports(tree):
            if LAYER[_area(target)] > LAYER[_area(name)]:
                bad.append(f"{name}:{line} imports {target}, a layer above it")
    assert not bad, "\n".join(bad)


def test_no_import_runs_back_up_the_layers():
    bad = []
    for name, tree in _modules():
        for line, target, _ in _imports(tree):
            if _area(target) == "cli" and _area(name) != "cli" and name != "dnfbot.__main__":
                bad.append(f"{name}:{line} imports {target} (only the command line may)")
            if _area(name) == "retrieval" and _area(target) in ("train", "datasets", "eval", "bench"):
                bad.append(f"{name}:{line} imports {target} (retrieval is below training, data and eval)")
            if _area(target) == "bench" and _area(name) not in ("bench", "cli"):
                bad.append(f"{name}:{line} imports {target} (benchmarks sit beside the product)")
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for name, tree in _modules():
        for line, target, names in _imports(tree):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name and (name, target) not in PRIVATE_IMPORT_EXCEPTIONS:
                bad.append(f"{name}:{line} imports {', '.join(private)} from {target}")
    assert not bad, "\n".join(bad)


def test_test_doubles_are_not_product_modules():
    assert not (SRC / "train" / "ppo_toy.py").exists() and not (SRC / "serve" / "fake_openai.py").exists()
    assert not (SRC / "synth" / "fake_server.py").exists()


def _verbs(group, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for name in group.list_commands(None):
        cmd = group.get_command(None, name)
        assert cmd is not None, f"{' '.join((*prefix, name))} is listed but cannot be loaded"
        if hasattr(cmd, "list_commands"):
            out += _verbs(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_every_registered_verb_is_reachable():
    import typer

    verbs = _verbs(typer.main.get_command(app))
    groups = {v[0] for v in verbs if len(v) > 1}
    assert groups == set(GROUPS), "every group has at least one verb"
    runner = CliRunner()
    for verb in verbs:
        r = runner.invoke(app, [*verb, "--help"])
        assert r.exit_code == 0, (verb, r.output)
        assert "Usage:" in r.output, verb
    assert ("train", "ppo") in verbs and ("synth", "qa") in verbs and ("bench", "dense") in verbs
    assert len(verbs) >= 36  # every verb of the old registrars (bench sft: a hidden alias of bench train)


def test_help_imports_no_heavy_library():
    """`dnfbot --help` loads no group module and none of torch & co. (lazy imports keep start-up fast)."""
    code = (
        "import sys, json\n"
        "sys.argv = ['dnfbot', '--help']\n"
        "from dnfbot.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'transformers', 'numpy', 'fastapi', 'openai', 'yaml', 'pydantic', 'kiwipiepy')\n"
        "mods = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "groups = [m for m in sys.modules if m.startswith('dnfbot.cli.') and m.split('.')[2] not in"
        " ('options', 'ask', 'serve')]\n"
        "sys.stderr.write(json.dumps({'heavy': sorted({m.split('.')[0] for m in mods}), 'groups': groups}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = json.loads(p.stderr.strip().splitlines()[-1])
    assert loaded == {"heavy": [], "groups": []}, loaded


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_help_lists_its_verbs(group):
    r = CliRunner().invoke(app, [group, "--help"])
    assert r.exit_code == 0 and "Commands" in r.output, r.output
