"""`dnfbot corpus check | export`."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import JSON, show

corpus = typer.Typer(no_args_is_help=True)


@corpus.command("check")
def corpus_check(path: Path = typer.Argument(..., help="guide JSON, JSONL or folder"), json_out: bool = JSON):
    """Report empty/duplicate articles, invisible characters, HTML leftovers, like counts, label mismatches."""
    from dnfbot.corpus.doctor import check

    show(check(path), json_out, _print_check)


def _print_check(r: dict) -> None:
    from dnfbot.console import out

    out.print(f"[bold]{r['path']}[/]: {r['articles']} articles")
    rows = [
        ("empty", r["empty"]["count"], r["empty"]["action"], r["empty"]["ids"]),
        (
            "near-empty (<200 chars)",
            r["near_empty"]["count"],
            r["near_empty"]["action"],
            r["near_empty"]["ids"],
        ),
        (
            "exact duplicates (groups)",
            r["exact_duplicates"]["groups"],
            r["exact_duplicates"]["action"],
            r["exact_duplicates"]["ids"],
        ),
        (
            "near duplicates (pairs)",
            r["near_duplicates"]["pairs"],
            r["near_duplicates"]["action"],
            [p["ids"] for p in r["near_duplicates"]["pairs_list"]],
        ),
        (
            "HTML/CSS leftovers",
            r["html_leftovers"]["articles"],
            r["html_leftovers"]["action"],
            list(r["html_leftovers"]["examples"]),
        ),
        (
            "trailing like-count line",
            r["trailing_like_count"]["articles"],
            r["trailing_like_count"]["action"],
            [],
        ),
        (
            "glued sentences",
            r["glued_sentences"]["count"] + r["glued_sentences"]["bullets"],
            r["glued_sentences"]["action"],
            [],
        ),
    ]
    for kind, n in sorted(r["page_furniture"]["sentences"].items()):
        rows.append((f"{kind} sentences", n, r["page_furniture"]["action"], []))
    for kind, v in r["invisible_characters"]["kinds"].items():
        rows.append((kind, v["articles"], r["invisible_characters"]["action"], v["ids"]))
    lm = r["label_mismatch"]
    rows.append(("class label ≠ text", lm["count"], lm["action"], [i["id"] for i in lm["items"]]))
    for name, n, action, ids in rows:
        shown = ", ".join(map(str, ids[:8])) + (" …" if len(ids) > 8 else "")
        out.print(
            f"  {'[red]' if n else '[green]'}{n:>4}[/] {name}: {action}" + (f" [dim]({shown})" if ids else "")
        )
    if lm["items"]:
        out.print(f"  labels shifted from about id {lm['first_shifted_id']} on, e.g.:")
        for item in lm["items"][:5]:
            out.print(
                f"    {item['id']}: '{item['title'][:40]}' labelled '{item['label']}' → {item['detected']}"
            )


@corpus.command("export")
def corpus_export(
    corpus_paths: list[Path] = typer.Option(..., "--corpus", help="guide JSON, JSONL or folder; repeatable"),
    out_path: Path = typer.Option(..., "--out", help="cleaned documents as JSONL {id,title,text,metadata}"),
    json_out: bool = JSON,
):
    """Write the cleaned, tagged corpus as generic JSONL (the format `--corpus x.jsonl` reads)."""
    from dnfbot.console import out
    from dnfbot.corpus import load_corpus
    from dnfbot.io import write_jsonl

    docs, report = load_corpus([str(p) for p in corpus_paths])
    n = write_jsonl(
        out_path,
        (
            {
                "id": d.doc_id,
                "title": d.title,
                "text": d.text,
                "metadata": {
                    "category1": d.category1,
                    "category2": d.category2,
                    "category3": d.category3,
                    **d.metadata,
                },
            }  # fmt: skip
            for d in docs
        ),
    )
    result = {"out": str(out_path), "documents": n, "corpus": report.to_dict()}
    show(result, json_out, lambda r: out.print(f"wrote {r['documents']} documents to {r['out']}"))
