"""`dnfbot eval embedder`: does fine-tuning separate a question's own passage from the others?

The original's analysis, per checkpoint (base model, epoch 1, 2, 3 …) on held-out pairs:
  - mean cosine similarity of each question to its own passage vs to every other passage, and the gap;
  - histograms of both (one panel per checkpoint, PNG);
  - retrieval among all passages of the pairs file: Recall@k and MRR@10, before (base) vs after (last).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnfbot.errors import InputError
from dnfbot.eval.metrics import mrr, recall
from dnfbot.io import atomic_write_json, read_json


def run_models(run_dir: str | Path) -> list[tuple[str, str]]:
    """(label, path) for a `dnfbot train embedder` output: its base model, then each epoch checkpoint."""
    run = Path(run_dir)
    meta_path = run / "embedder_train.json"
    if not meta_path.exists():
        raise InputError(f"{run}: no embedder_train.json; is this a `dnfbot train embedder --out` folder?")
    meta = read_json(meta_path)
    models = [("base", meta.get("model_path") or meta["model"])]
    # the checkpoints this run wrote (an older, longer run in the same folder may have left more epoch-N)
    named = [Path(c) for c in meta.get("checkpoints", [])]
    epochs = [run / c.name for c in named if (run / c.name).is_dir()] or sorted(
        (p for p in run.glob("epoch-*") if p.is_dir() and p.name[6:].isdigit()), key=lambda p: int(p.name[6:])
    )
    models += [(f"epoch {p.name.split('-')[1]}", str(p)) for p in epochs]
    if not epochs:
        models.append(("final", str(run)))
    return models


def load_eval_pairs(path: str | Path) -> tuple[list[dict], list[str], list[str]]:
    """Held-out pairs and the passage pool (every distinct passage of the file, keyed by chunk id).

    Held out = valid pairs whose article has no training pair: a question split (`data pairs --split-by
    question`) puts other questions about the same passage in training, and a fine-tuned model that has seen
    the passage would be scored on it. A file without a valid split is scored whole (a base model only)."""
    from dnfbot.datasets.pairs import load_pairs

    allp = load_pairs(path)
    valid = [p for p in allp if p.get("split") == "valid"]
    if not valid:
        queries = allp
    else:
        trained = {p.get("doc_id") or p["chunk_id"] for p in allp if p.get("split", "train") == "train"}
        queries = [p for p in valid if (p.get("doc_id") or p["chunk_id"]) not in trained]
        if not queries:
            raise InputError(
                f"{path}: every valid pair's article also has training pairs, so nothing is held out; "
                "write the pairs with `dnfbot data pairs --split-by doc`"
            )
    pool: dict[str, str] = {}
    for p in allp:
        pool.setdefault(p["chunk_id"], p["passage"])
    if len(pool) < 2:
        raise InputError(f"{path}: need pairs over at least 2 different passages")
    return queries, list(pool), list(pool.values())


def similarity_stats(sim: np.ndarray, gold: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Metrics from the query × passage cosine matrix and each query's gold passage column."""
    n, p = sim.shape
    own = sim[np.arange(n), gold]
    other_mean = (sim.sum(1) - own) / (p - 1)
    rank = (sim > own[:, None]).sum(1) + 1  # ties count in the query's favour
    out = {
        "mean_cos_own": float(own.mean()),
        "mean_cos_other": float(other_mean.mean()),
        "gap": float(own.mean() - other_mean.mean()),
    }
    for k in ks:
        out[f"recall@{k}"] = recall(rank, k)
    out["mrr@10"] = mrr(rank, 10)
    return out


def evaluate_embedders(
    models: list[tuple[str, str]],
    pairs: str | Path,
    out_dir: str | Path,
    *,
    ks: tuple[int, ...] = (1, 5, 10),
    query_prefix: str = "",
    passage_prefix: str = "",
    max_seq_length: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> dict:
    """`cache_dir`: the embedding cache (the index build's): the base model's passage vectors are usually
    there already, and a re-run encodes nothing."""
    from dnfbot.retrieval.dense import cached_encode
    from dnfbot.retrieval.encoders import open_encoder

    queries, ids, passages = load_eval_pairs(pairs)
    col = {c: i for i, c in enumerate(ids)}
    gold = np.array([col[q["chunk_id"]] for q in queries])
    rng = np.random.default_rng(seed)
    results, hists = [], []
    for label, path in models:
        enc = open_encoder(path, query_prefix=query_prefix, passage_prefix=passage_prefix)
        enc.prefixes = (query_prefix, passage_prefix)  # as given, even when empty (no model prompts)
        tag = ""
        if max_seq_length and getattr(enc, "max_seq_length", max_seq_length) != max_seq_length:
            enc.max_seq_length = max_seq_length
            if getattr(enc, "st", None) is not None:
                enc.st.max_seq_length = max_seq_length
            tag = f"-len{max_seq_length}"
        pv = cached_encode(enc, passages, "passage", cache_dir, batch_size, tag)
        qv = cached_encode(enc, [q["query"] for q in queries], "query", cache_dir, batch_size, tag)
        sim = qv @ pv.T
        results.append({"label": label, "model": str(path), **similarity_stats(sim, gold, ks)})
        # histogram sample of "other" cosines: up to 50 random other passages per question
        cols = rng.integers(0, len(ids), size=(len(queries), min(50, len(ids))))
        keep = cols != gold[:, None]
        hists.append((sim[np.arange(len(queries)), gold], sim[np.arange(len(queries))[:, None], cols][keep]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "pairs": str(pairs),
        "queries": len(queries),
        "passages": len(ids),
        "checkpoints": results,
        "before": results[0],
        "after": results[-1],
        "histogram_png": str(out / "embedder_similarity_hist.png"),
        "curve_png": str(out / "embedder_checkpoints.png"),
    }
    _plot_histograms(results, hists, Path(report["histogram_png"]))
    _plot_curves(results, ks, Path(report["curve_png"]))
    atomic_write_json(out / "embedder_eval.json", report)
    return report


def _plot_histograms(results: list[dict], hists: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 4)  # a grid, so that a 10-epoch run stays readable
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), sharey=False, squeeze=False)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, r, (own, other) in zip(axes.flat, results, hists, strict=False):
        ax.hist(np.clip(other, -0.2, 1.0), bins=bins, density=True, alpha=0.6, label="other passages")
        ax.hist(np.clip(own, -0.2, 1.0), bins=bins, density=True, alpha=0.6, label="own passage")
        ax.set_title(
            f"{r['label']}: own {r['mean_cos_own']:.2f} / other {r['mean_cos_other']:.2f}", fontsize=9
        )
        ax.set_xlabel("cosine similarity")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(results: list[dict], ks: tuple[int, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"].replace("epoch ", "ep ") for r in results]
    x = np.arange(len(results))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(x, [r["mean_cos_own"] for r in results], "o-", label="own passage")
    a.plot(x, [r["mean_cos_other"] for r in results], "o-", label="other passages")
    a.set_title("mean cosine similarity")
    for k in ks:
        b.plot(x, [r[f"recall@{k}"] for r in results], "o-", label=f"Recall@{k}")
    b.plot(x, [r["mrr@10"] for r in results], "o--", label="MRR@10")
    b.set_title("retrieval among the pairs' passages")
    for ax in (a, b):
        ax.set_xticks(x, labels, fontsize=8, rotation=45 if len(labels) > 5 else 0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(r: dict) -> str:
    ks = [k for k in r["before"] if k.startswith("recall@")]
    head = (
        f"{'checkpoint':<12} {'own':>6} {'other':>6} {'gap':>6} "
        + " ".join(f"{k:>9}" for k in ks)
        + "   MRR@10"
    )
    lines = [f"{r['queries']} held-out questions, {r['passages']} passages", head]
    for c in r["checkpoints"]:
        lines.append(
            f"{c['label']:<12} {c['mean_cos_own']:6.3f} {c['mean_cos_other']:6.3f} {c['gap']:6.3f} "
            + " ".join(f"{c[k]:9.3f}" for k in ks)
            + f"   {c['mrr@10']:.3f}"
        )
    lines.append(f"histograms: {r['histogram_png']}\ncurves:     {r['curve_png']}")
    return "\n".join(lines)
