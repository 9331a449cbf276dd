"""`dnfbot bench index`: index build cost as the corpus grows, and for very long articles.

Cases (each a synthetic JSONL corpus made from the cleaned guide articles, built in a fresh child process so
that its peak memory is its own):
- `N×`: as many articles as the guide corpus, article i being guide articles i, i+1, …, i+N-1 joined by blank
  lines: N times the characters, in articles N times longer (the longest: N × 42k characters).
- `M MB article`: one article of M MB (UTF-8), the guide corpus' text repeated.

Reported per case: seconds for `build_index` (tokenizer loaded and warmed first: a fixed ~2 s that is not
per character), peak resident memory of the child, characters per second, and the cost per character relative
to the first case. Target (issue 14): cost per character within 1.5× from 1× to 100×; 1 MB in ≤ 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dnfbot.config import Settings
from dnfbot.options import option


@dataclass
class IndexScaleBench:
    """Index build seconds, peak memory and chars/s at 1×, 10×, 100× the corpus and for long articles."""

    section = "index-scale"
    corpus: list[Path] | None = option(
        None, "guide JSON, JSONL or folder; repeatable (default: the configured corpus)"
    )
    scale: bool = option(False, "also build the --factors multiples of the corpus")
    factors: str = option("1,10,100", "with --scale: corpus multiples to build")
    long_mb: str = option("", "also one article of each of these sizes (MB), e.g. 1,50")
    timeout: float | None = option(None, "give up on a case after this many seconds")
    config: Path | None = option(None, "YAML settings file (see `dnfbot config`)")

    def run(self) -> dict:
        from dnfbot.config import load_settings

        settings = load_settings(self.config)
        return run_scale_bench(
            [str(p) for p in settings.corpus_paths(self.corpus)],
            settings,
            factors=[int(f) for f in parse_numbers(self.factors, "--factors")] if self.scale else [1],
            long_mb=parse_numbers(self.long_mb, "--long-mb"),
            config=self.config,
            write=False,  # run_bench records the section
            timeout=self.timeout,
        )


def parse_numbers(text: str, option: str) -> list[float]:
    """ "1,10,100" → [1.0, 10.0, 100.0]; InputError naming the option otherwise."""
    from dnfbot.errors import InputError

    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"{option}: expected numbers separated by commas, got {text!r}") from None
    if any(not (v > 0) or v != v or v == float("inf") for v in values):
        raise InputError(f"{option}: every value must be a positive number")
    return values


def make_scaled_corpus(docs, factor: int, out: Path) -> dict:
    """JSONL of len(docs) articles, each `factor` consecutive guide articles joined (see module doc)."""
    n, chars = len(docs), 0
    with open(out, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            text = "\n\n".join(docs[(i + j) % n].text for j in range(factor))
            chars += len(text)
            meta = {"category1": d.category1, "category2": d.category2, "category3": d.category3}
            rec = {"id": f"{d.doc_id}x{factor}", "title": d.title, "text": text, "metadata": meta}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"case": f"{factor}×", "documents": n, "chars": chars, "bytes": out.stat().st_size}


def make_long_article(docs, megabytes: float, out: Path) -> dict:
    """JSONL of one article of `megabytes` MB of UTF-8 text (the guide corpus' text repeated)."""
    target = int(megabytes * 1_000_000)
    parts, size = [], 0
    while size < target:
        for d in docs:
            parts.append(d.text)
            size += len(d.text.encode("utf-8")) + 2
            if size >= target:
                break
    text = "\n\n".join(parts).encode("utf-8")[:target].decode("utf-8", "ignore")
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "long", "title": "긴 글", "text": text}, ensure_ascii=False) + "\n")
    label = f"{megabytes:g} MB article"
    return {"case": label, "documents": 1, "chars": len(text), "bytes": len(text.encode("utf-8"))}


def _child(corpus: str, index_dir: str) -> None:
    """Build one case; print its timing as one JSON line (run as `python -m dnfbot.bench.index_scale`)."""
    from dnfbot.config import load_settings
    from dnfbot.retrieval.index import build_index
    from dnfbot.retrieval.tokenizer import get_tokenizer

    t = time.perf_counter()
    tok = get_tokenizer()
    tok.tokenize_many(["던전앤파이터 공략 글을 미리 한 번 분석해 둡니다."])  # Kiwi loads its model lazily
    load_s = time.perf_counter() - t
    settings = load_settings(os.environ.get("DNFBOT_BENCH_CONFIG"))
    t, cpu = time.perf_counter(), time.process_time()
    result = build_index([corpus], Path(index_dir), settings)
    seconds, cpu_s = time.perf_counter() - t, time.process_time() - cpu
    m = result.build.manifest
    d = {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "tokenizer_load_s": load_s,
        "chunks": m["chunks"],
        "docs": m["documents"],
    }
    print(json.dumps(d))


def run_scale_bench(
    paths: list[str],
    settings: Settings,
    *,
    factors: list[int] = (1, 10, 100),
    long_mb: list[float] = (),
    config: Path | None = None,
    write: bool = True,
    timeout: float | None = None,
) -> dict:
    from dnfbot.corpus import load_corpus

    docs, _ = load_corpus(paths)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dnfbot-bench-index-") as tmp:
        tmp = Path(tmp)
        cases = [("scale", f) for f in sorted(factors)] + [("long", m) for m in sorted(long_mb)]
        for kind, value in cases:
            corpus = tmp / f"{kind}-{value}.jsonl"
            row = (
                make_scaled_corpus(docs, int(value), corpus)
                if kind == "scale"
                else make_long_article(docs, float(value), corpus)
            )
            row.update(_measure(corpus, tmp / f"index-{kind}-{value}", config, timeout))
            corpus.unlink()
            rows.append(row)
    base = next((r for r in rows if "seconds" in r), None)
    for r in rows:
        if "seconds" in r:
            r["chars_per_s"] = r["chars"] / r["seconds"]
            r["cost_per_char_vs_first"] = (r["seconds"] / r["chars"]) / (base["seconds"] / base["chars"])
            r["cpu_cost_per_char_vs_first"] = (r["cpu_s"] / r["chars"]) / (base["cpu_s"] / base["chars"])
    md = to_markdown(rows, paths, factors, long_mb)
    if write:
        from dnfbot.bench.report import update_section

        update_section("index-scale", md)
    return {"results": rows, "markdown": md}


def _measure(corpus: Path, index_dir: Path, config: Path | None, timeout: float | None) -> dict:
    """One child process per case; its own peak memory from wait4."""
    env = dict(os.environ)
    if config:
        env["DNFBOT_BENCH_CONFIG"] = str(config)
    cmd = [sys.executable, "-m", "dnfbot.bench.index_scale", str(corpus), str(index_dir)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                return {"error": f"killed after {timeout:.0f} s"}
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            lines = err.read().strip().splitlines() or ["failed"]
            return {"error": lines[-1]}
        d = json.loads(out.read().strip().splitlines()[-1])
    d["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
    return d


def to_markdown(rows: list[dict], paths: list[str], factors, long_mb) -> str:
    args = ["--scale", f"--factors {','.join(str(f) for f in factors)}"] if list(factors) != [1] else []
    if long_mb:
        args.append(f"--long-mb {','.join(f'{m:g}' for m in long_mb)}")
    lines = [
        "## Index build at scale (`dnfbot bench index`)",
        "",
        f"Command: `dnfbot bench index {' '.join(args)}` over {', '.join(paths)}. Each case is a synthetic JSONL "
        "corpus built from the cleaned guide articles (N×: article i = guide articles i … i+N-1 joined, so N "
        "times the characters in articles N times longer; M MB: one article of M MB of UTF-8), indexed by "
        "`build_index` in a fresh process after the tokenizer is loaded and warmed (a fixed ~2 s). Long "
        "documents are tokenized in windows (whole up to 50,000 characters, 4,000-character windows beyond).",
        "",
        "Wall seconds depend on what else shares the cores; CPU seconds (all threads of the build) much less, "
        "so the cost per character is given for both.",
        "",
        "| case | articles | characters | MB | chunks | build s | CPU s | chars/s "
        "| cost/char vs first (wall, CPU) | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['case']} | {r['documents']} | {r['chars']:,} | {r['bytes'] / 1e6:.1f} | — | "
                f"{r['error']} | | | | |"
            )
            continue
        lines.append(
            f"| {r['case']} | {r['documents']} | {r['chars']:,} | {r['bytes'] / 1e6:.1f} | {r['chunks']:,} | "
            f"{r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['chars_per_s']:,.0f} | "
            f"{r['cost_per_char_vs_first']:.2f}×, {r['cpu_cost_per_char_vs_first']:.2f}× | {r['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
