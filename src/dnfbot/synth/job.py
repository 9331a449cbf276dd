"""`dnfbot synth qa`: one question + long/medium/short answers per passage, as a resumable job.

Passages are the corpus layer's chunks (title = subject). Each gets a key: a hash of (prompt template,
subject, passage, model) for an LLM back end, of (extractive rules, subject, passage, part) offline. The output
is append-only JSONL, one flushed line per finished passage; on start the job reads the keys already in the
output (and the rejects file) and skips them, so it can be killed at any moment and re-run: nothing lost,
nothing duplicated. Rejects go to `<out stem>.rejects.jsonl` with their reason. A reject caused by the server
(retries spent on 429/5xx/timeouts) is marked retryable and tried again by the next run; a reject for content
(a reply that stayed invalid, a passage too short for the extractive rules) is kept unless --retry-rejects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dnfbot.corpus.chunking import Chunk
from dnfbot.errors import InputError
from dnfbot.io import JsonlAppender, iter_jsonl
from dnfbot.options import option
from dnfbot.synth import extractive
from dnfbot.synth.client import RetryPolicy
from dnfbot.synth.cost import estimate_prompt_tokens, estimate_tokens, load_prices
from dnfbot.synth.parse import InvalidReply, get_kiwi
from dnfbot.synth.parse_pool import make_parser
from dnfbot.synth.prompt import PromptTemplate, load_template

BACKENDS = ("openai", "extractive")
RECORD_FIELDS = (
    "id",
    "doc_id",
    "chunk_id",
    "subject",
    "question",
    "long",
    "medium",
    "short",
    "model",
    "generator",
    "usage",
)
PROCESS_POOL_MIN_PASSAGES = 200
RETRY_KINDS = ("http_429", "http_5xx", "timeout", "connection", "bad_reply", "invalid_reply")


@dataclass
class SynthOptions:
    """`dnfbot synth qa`'s options; the retry policy's are in RetryPolicy (synth/client.py)."""

    out: Path = option(help="output JSONL (appended; re-runs skip finished passages)")
    backend: str = option("openai", "openai (any OpenAI-compatible server) | extractive (offline)")
    model: str = option("gpt-3.5-turbo", "model for passages that fit --context-limit")
    long_model: str | None = option("gpt-4-1106-preview", "model for longer passages ('' = always --model)")
    # gpt-3.5-turbo's original 4k context
    context_limit: int = option(4096, "tokens --model accepts (prompt estimate + --max-tokens)")
    max_tokens: int = option(1024, "reply budget per request")
    # some randomness, so that a retried invalid reply can come out differently
    temperature: float = option(0.7, "sampling temperature")
    template: Path | None = option(None, "prompt template file (default: the packaged synth_qa.txt)")
    base_url: str | None = option(
        None, "server URL (else OPENAI_BASE_URL, else api.openai.com); key from OPENAI_API_KEY"
    )
    max_concurrency: int = option(8, "requests in flight")
    max_invalid_retries: int = option(2, "new requests for a reply that fails validation")
    max_failures: int = option(10, "stop after this many passages in a row fail on the server")
    limit: int | None = option(None, "only the first N passages")
    retry_rejects: bool = option(False, "also redo passages rejected for their content")
    prices: Path | None = option(None, "price table YAML (default: packaged + $DNFBOT_HOME/prices.yaml)")
    chunk_size: int = option(3000, "characters per passage (the CLI's default: the config's chunk.size)")
    chunk_overlap: int = option(250, "characters shared by neighbouring passages (default: chunk.overlap)")
    show_progress: bool = option(True, "progress bar on stderr", flag="--progress/--no-progress")
    policy: RetryPolicy = option(help="retries, backoff and timeout", cli=False, factory=RetryPolicy)
    seed: int | None = option(None, "backoff jitter (tests)", cli=False)
    # Processes that validate replies (Kiwi holds the GIL, so a thread would stall the HTTP loop).
    # None = auto: none (a thread) for small jobs, else up to 4 with one core left for the event loop.
    parse_workers: int | None = option(None, "reply-validation processes (None: auto)", cli=False)

    def validate(self) -> None:
        for flag, value in (
            ("--max-tokens", self.max_tokens),
            ("--context-limit", self.context_limit),
            ("--max-failures", self.max_failures),
            ("--max-concurrency", self.max_concurrency),
        ):
            if value < 1:
                raise InputError(f"{flag} must be at least 1")
        if self.max_invalid_retries < 0:
            raise InputError("--max-invalid-retries must be >= 0")
        if self.backend not in BACKENDS:
            raise InputError(f"unknown --backend '{self.backend}' (choose from {', '.join(BACKENDS)})")
        self.long_model = self.long_model or None
        self.policy.validate()


@dataclass
class Task:
    key: str
    chunk: Chunk
    model: str
    messages: list[dict] | None = None
    est_prompt_tokens: int = 0


@dataclass
class RunStats:
    records: int = 0
    rejects: int = 0
    retries: Counter = field(default_factory=Counter)
    prompt_tokens: Counter = field(default_factory=Counter)  # by model
    completion_tokens: Counter = field(default_factory=Counter)
    passages_by_model: Counter = field(default_factory=Counter)
    usage_estimated: int = 0  # replies without a usage block (tokens estimated offline)
    requests: int = 0
    consecutive_failures: int = 0


def rejects_path(out: str | Path) -> Path:
    """qa.jsonl → qa.rejects.jsonl (any other name gets .rejects.jsonl appended)."""
    out = Path(out)
    if out.suffix == ".jsonl":
        return out.with_name(out.stem + ".rejects.jsonl")
    return out.with_name(out.name + ".rejects.jsonl")


def _hash(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:24]


def passages(corpus: list[str | Path], opts: SynthOptions) -> list[Chunk]:
    """The corpus's chunks, cut as the index cuts them (the same chunk ids)."""
    from pydantic import ValidationError

    from dnfbot.config import ChunkSettings, validation_message
    from dnfbot.corpus import load_chunks

    try:
        chunk = ChunkSettings(size=opts.chunk_size, overlap=opts.chunk_overlap)
    except ValidationError as e:
        raise InputError(f"--chunk-size/--chunk-overlap: {validation_message(e)}") from None
    return load_chunks(corpus, chunk).chunks


def plan(chunks: list[Chunk], opts: SynthOptions, template: PromptTemplate | None) -> tuple[list[Task], int]:
    """Tasks in corpus order (first --limit passages), and how many repeated an earlier key."""
    if opts.limit is not None:
        chunks = chunks[: max(0, opts.limit)]
    tasks, seen, dups = [], set(), 0
    for c in chunks:
        if opts.backend == "extractive":
            task = Task(
                _hash("extractive", extractive.MODEL, c.title, c.text, str(c.part)), c, extractive.MODEL
            )
        else:
            messages = template.messages(c.title, c.text)
            est = estimate_prompt_tokens(messages)
            fits = est + opts.max_tokens <= opts.context_limit
            model = opts.model if fits or not opts.long_model else opts.long_model
            task = Task(_hash(template.digest, c.title, c.text, model), c, model, messages, est)
        if task.key in seen:
            dups += 1
            continue
        seen.add(task.key)
        tasks.append(task)
    return tasks, dups


def finished_keys(out: Path, retry_rejects: bool) -> tuple[set[str], set[str]]:
    """Keys already in the output, and rejected keys that this run should skip."""
    done = {r["id"] for r in iter_jsonl(out, allow_torn_tail=True) if "id" in r} if out.exists() else set()
    skip: set[str] = set()
    rej = rejects_path(out)
    if rej.exists() and not retry_rejects:
        for r in iter_jsonl(rej, allow_torn_tail=True):
            if "id" in r:
                (skip.discard if _retryable(r) else skip.add)(r["id"])
    return done, skip - done


def _retryable(reject: dict) -> bool:
    # Older versions stored an empty reply from a faulty server as a content reject: it says nothing about
    # the passage, so it is tried again like a transport fault.
    empty_reply = (
        reject.get("generator") == "openai" and "reply" in reject and not str(reject["reply"] or "").strip()
    )
    return bool(reject.get("retryable")) or empty_reply


def _base(task: Task, generator: str, **fields) -> dict:
    """A record (or reject) in the documented field order: id, doc_id, chunk_id, subject, …, model, generator."""
    c = task.chunk
    qa = {k: fields.pop(k) for k in ("question", "long", "medium", "short") if k in fields}
    rec = {"id": task.key, "doc_id": c.doc_id, "chunk_id": c.chunk_id, "subject": c.title, **qa}
    return {**rec, "model": task.model, "generator": generator, **fields}


class _Writer:
    """Output and rejects appenders (the rejects file is created only when there is something to write)."""

    def __init__(self, out: Path):
        self.out = JsonlAppender(out)
        self._rej_path = rejects_path(out)
        self._rej: JsonlAppender | None = None

    def record(self, rec: dict) -> None:
        self.out.write(rec)

    def reject(self, rec: dict) -> None:
        if self._rej is None:
            self._rej = JsonlAppender(self._rej_path)
        self._rej.write(rec)

    def close(self) -> None:
        self.out.close()
        if self._rej is not None:
            self._rej.close()


def dry_run(opts: SynthOptions, corpus: list[str | Path]) -> dict:
    """The first prompt and a cost estimate (prompt tokens estimated offline, replies at --max-tokens)."""
    opts.validate()
    template = None if opts.backend == "extractive" else load_template(opts.template)
    tasks, dups = plan(passages(corpus, opts), opts, template)
    done, skip = finished_keys(opts.out, opts.retry_rejects)
    todo = [t for t in tasks if t.key not in done and t.key not in skip]
    prices = load_prices(opts.prices)
    models: dict[str, dict] = {}
    for t in todo:
        m = models.setdefault(t.model, {"passages": 0, "prompt_tokens_est": 0, "completion_tokens_max": 0})
        m["passages"] += 1
        m["prompt_tokens_est"] += t.est_prompt_tokens
        m["completion_tokens_max"] += 0 if opts.backend == "extractive" else opts.max_tokens
    total: float | None = 0.0
    for name, m in models.items():
        if opts.backend == "extractive":
            m["cost_usd_max"] = 0.0
        else:
            m["cost_usd_max"] = prices.cost(name, m["prompt_tokens_est"], m["completion_tokens_max"])
        total = None if total is None or m["cost_usd_max"] is None else total + m["cost_usd_max"]
    first = tasks[0] if tasks else None
    return {
        "dry_run": True,
        "backend": opts.backend,
        "passages": len(tasks),
        "already_done": len(tasks) - len(todo),
        "to_do": len(todo),
        "duplicates": dups,
        "models": models,
        "cost_usd_max": total,
        "first_prompt": first.messages if first and first.messages else None,
        "first_passage": {"chunk_id": first.chunk.chunk_id, "subject": first.chunk.title} if first else None,
    }


def run_synth(opts: SynthOptions, corpus: list[str | Path]) -> dict:
    """Run the job to the end (or until a fatal error); returns the summary."""
    opts.validate()
    client_args = None
    template = None
    if opts.backend == "openai":
        from dnfbot.generate.endpoints import resolve_api_key, resolve_base_url
        from dnfbot.synth.client import require_openai

        require_openai()
        template = load_template(opts.template)
        base_url = resolve_base_url(opts.base_url)
        client_args = (base_url, resolve_api_key(base_url))  # fail on a missing key before any work
    prices = load_prices(opts.prices)
    tasks, dups = plan(passages(corpus, opts), opts, template)
    done, skip = finished_keys(opts.out, opts.retry_rejects)
    todo = [t for t in tasks if t.key not in done and t.key not in skip]
    workers = _parse_workers(opts, len(todo))
    if opts.backend == "extractive" or workers == 0:
        get_kiwi()  # load the sentence splitter here, before the clock starts
    stats = RunStats()
    writer = _Writer(opts.out)
    t0 = time.perf_counter()
    try:
        with _Progress(opts.show_progress, len(todo), opts.backend) as bar:
            if opts.backend == "extractive":
                _run_extractive(todo, writer, stats, bar)
            else:
                asyncio.run(_run_remote(todo, opts, client_args, writer, stats, bar, workers))
    finally:
        writer.close()
    seconds = time.perf_counter() - t0
    return _summary(opts, tasks, todo, dups, stats, prices, seconds)


def _run_extractive(todo: list[Task], writer: _Writer, stats: RunStats, bar) -> None:
    for t in todo:
        c = t.chunk
        stats.passages_by_model[t.model] += 1
        try:
            qa = extractive.synthesize(c.title, c.text, c.part)
        except InvalidReply as e:
            writer.reject(_base(t, "extractive", reason=str(e), retryable=False))
            stats.rejects += 1
        else:
            usage = {"prompt_tokens": 0, "completion_tokens": 0, "attempts": 1}
            writer.record(_base(t, "extractive", **qa.to_dict(), usage=usage))
            stats.records += 1
        bar.advance()


def _parse_workers(opts: SynthOptions, n: int) -> int:
    if opts.parse_workers is not None:
        return max(0, opts.parse_workers)
    if opts.backend == "extractive" or n < PROCESS_POOL_MIN_PASSAGES:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


async def _run_remote(
    todo, opts: SynthOptions, client_args, writer: _Writer, stats: RunStats, bar, workers: int
) -> None:
    from dnfbot.synth.client import ChatClient, FatalServerError, RequestFailed

    if not todo:
        return
    client = ChatClient(*client_args, opts.policy, seed=opts.seed)
    # Kiwi runs off the event loop: a thread for small jobs, worker processes for large ones (they load
    # Kiwi while the first requests are in flight).
    parser = make_parser(workers)
    await parser.start()
    it = iter(todo)

    async def process(t: Task) -> None:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "attempts": 0}
        stats.passages_by_model[t.model] += 1
        reason, last = "", None
        for attempt in range(opts.max_invalid_retries + 1):
            try:
                reply = await client.complete(
                    t.model, t.messages, max_tokens=opts.max_tokens, temperature=opts.temperature
                )
            except RequestFailed as e:
                writer.reject(_base(t, "openai", reason=str(e), retryable=True, usage=usage))
                stats.rejects += 1
                stats.consecutive_failures += 1
                if stats.consecutive_failures >= opts.max_failures:
                    raise FatalServerError(
                        f"{client.base_url} is failing: {stats.consecutive_failures} passages in a row ({e}); "
                        f"{stats.records} new records kept in {opts.out} — re-run to resume"
                    ) from None
                return
            stats.consecutive_failures = 0
            if not reply.usage_reported:
                stats.usage_estimated += 1
                reply.prompt_tokens, reply.completion_tokens = (
                    t.est_prompt_tokens,
                    estimate_tokens(reply.text),
                )
            usage["attempts"] += 1
            usage["prompt_tokens"] += reply.prompt_tokens
            usage["completion_tokens"] += reply.completion_tokens
            stats.prompt_tokens[t.model] += reply.prompt_tokens
            stats.completion_tokens[t.model] += reply.completion_tokens
            try:
                qa = await parser.parse(reply.text)
            except InvalidReply as e:
                reason, last = str(e), reply.text
                if attempt < opts.max_invalid_retries:
                    stats.retries["invalid_reply"] += 1
                continue
            writer.record(_base(t, "openai", **qa.to_dict(), usage=usage))
            stats.records += 1
            return
        reason = f"invalid reply: {reason}"
        writer.reject(_base(t, "openai", reason=reason, retryable=False, usage=usage, reply=last))
        stats.rejects += 1

    async def worker() -> None:
        for t in it:  # one shared iterator: each task is taken by exactly one worker
            await process(t)
            bar.advance()

    workers = [asyncio.create_task(worker()) for _ in range(min(opts.max_concurrency, len(todo)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        stats.retries.update(client.stats.retries)
        stats.requests = client.stats.requests
        await client.close()
        await parser.close()


def _summary(opts, tasks, todo, dups, stats: RunStats, prices, seconds: float) -> dict:
    by_model, total, unpriced = {}, 0.0, []
    for model in sorted(set(stats.passages_by_model) | set(stats.prompt_tokens)):
        p, c = stats.prompt_tokens[model], stats.completion_tokens[model]
        cost = 0.0 if opts.backend == "extractive" else prices.cost(model, p, c)
        if cost is None:
            unpriced.append(model)
        else:
            total += cost
        by_model[model] = {
            "passages": stats.passages_by_model[model],
            "prompt_tokens": p,
            "completion_tokens": c,
            "cost_usd": cost,
        }
    retries = {k: stats.retries.get(k, 0) for k in RETRY_KINDS}
    retries["total"] = sum(retries.values())
    out_total = sum(1 for _ in iter_jsonl(opts.out, allow_torn_tail=True)) if opts.out.exists() else 0
    return {
        "backend": opts.backend,
        "out": str(opts.out),
        "rejects_out": str(rejects_path(opts.out)),
        "passages": len(tasks),
        "already_done": len(tasks) - len(todo),
        "duplicates": dups,
        "processed": stats.records + stats.rejects,
        "records": stats.records,
        "rejects": stats.rejects,
        "records_total": out_total,
        "retries": retries,
        "requests": stats.requests,
        "prompt_tokens": sum(stats.prompt_tokens.values()),
        "completion_tokens": sum(stats.completion_tokens.values()),
        "usage_estimated_replies": stats.usage_estimated,
        "cost_usd": None if unpriced else round(total, 6),
        "unpriced_models": unpriced,
        "models": by_model,
        "seconds": round(seconds, 3),
        "passages_per_s": round((stats.records + stats.rejects) / seconds, 2) if seconds > 0 else None,
    }


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled and total > 0, total, label
        self._p = None

    def __enter__(self):
        if self.enabled:
            from dnfbot.console import progress

            self._p = progress()
            self._p.__enter__()
            self._task = self._p.add_task(f"synth qa ({self.label})", total=self.total)
        return self

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
