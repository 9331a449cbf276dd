"""`dnfbot feedback stats`: what players asked, what the bot refused, what they found wrong — what the guides
are missing.

Refusal rate counts answers to questions (chit-chat, which gets a self-introduction, is left out). Down-rate is
👎 / rated answers, by the answer's category1, board (category3) and back end; an answer's verdict is its latest
rating (a correction counts as 👎). Questions are grouped as the exports group them (same or near-duplicate).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path

from dnfbot.feedback.db import display
from dnfbot.feedback.export import Rated, group_questions
from dnfbot.feedback.store import iter_answers, read_feedback, verdicts


def _rate(d: dict) -> dict:
    rated = d["up"] + d["down"]
    return {**d, "rated": rated, "down_rate": round(d["down"] / rated, 4) if rated else None}


def compute(db, top: int = 10) -> dict:
    fb = read_feedback(db)
    v = verdicts(fb)
    items = [Rated(r, v.get(r["id"], {}).get("rating"), v.get(r["id"], {}).get("correction"))
             for r in iter_answers(db, with_trace=False)]  # fmt: skip
    questions = [it for it in items if it.row["kind"] != "chitchat"]
    refused = [it for it in questions if not it.answered]
    by: dict[str, dict] = {"category1": defaultdict(Counter), "board": defaultdict(Counter),
                           "backend": defaultdict(Counter)}  # fmt: skip
    for it in items:
        if it.rating is None:
            continue
        r = it.row
        for name, value in (
            ("category1", r["category1"]),
            ("board", r["category3"]),
            ("backend", r["backend"]),
        ):
            by[name][value or "(none)"][it.rating] += 1
    down_rate = {
        name: {k: _rate({"up": c["up"], "down": c["down"]}) for k, c in sorted(table.items())}
        for name, table in by.items()
    }
    groups = group_questions(questions)
    most_refused = sorted(
        ({"question": g.members[0].question, "asked": len(g.members),
          "refused": sum(not m.answered for m in g.members)} for g in groups),
        key=lambda d: (-d["refused"], -d["asked"], d["question"]),
    )  # fmt: skip
    most_down = sorted(
        ({"question": g.members[0].question, "down": sum(m.rating == "down" for m in g.members),
          "up": sum(m.rating == "up" for m in g.members),
          "corrections": sum(bool(m.correction) for m in g.members)} for g in groups),
        key=lambda d: (-d["down"], d["up"], d["question"]),
    )  # fmt: skip
    created = [it.row["created"] for it in items]
    return {
        "db": display(db.url),
        "answers": len(items),
        "by_channel": dict(sorted(Counter(it.row["channel"] for it in items).items())),
        "questions": len(questions),
        "answered": len(questions) - len(refused),
        "refused": len(refused),
        "refusal_rate": round(len(refused) / len(questions), 4) if questions else None,
        "chitchat": len(items) - len(questions),
        "feedback": {
            "rows": len(fb),
            "rated_answers": sum(1 for x in v.values() if x["rating"]),
            "up": sum(x["rating"] == "up" for x in v.values()),
            "down": sum(x["rating"] == "down" for x in v.values()),
            "corrections": sum(bool(x["correction"]) for x in v.values()),
            "comments": sum(bool(x["comment"]) for x in v.values()),
        },
        "down_rate": down_rate,
        "most_refused": [d for d in most_refused if d["refused"]][:top],
        "most_downvoted": [d for d in most_down if d["down"]][:top],
        "first": _iso(min(created)) if created else None,
        "last": _iso(max(created)) if created else None,
        "per_day": _per_day(items),
    }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _per_day(items: list[Rated]) -> dict[str, dict]:
    days: dict[str, Counter] = defaultdict(Counter)
    for it in items:
        day = dt.datetime.fromtimestamp(it.row["created"], dt.UTC).strftime("%Y-%m-%d")
        days[day]["answered" if it.answered else "refused"] += 1
        if it.rating:
            days[day][it.rating] += 1
    return {d: dict(c) for d, c in sorted(days.items())}


def _korean_font() -> None:
    """Use a CJK font when one is installed, so Korean labels are not boxes."""
    from matplotlib import font_manager, rcParams

    names = {f.name for f in font_manager.fontManager.ttflist}
    for cand in ("Noto Sans CJK KR", "NanumGothic", "Noto Serif CJK KR", "Malgun Gothic", "AppleGothic"):
        if cand in names:
            rcParams["font.family"] = cand
            return


def plot(stats: dict, out: str | Path) -> Path:
    """A 2×2 PNG: answers per day (answered / refused / 👎), down-rate by category and by back end, most refused."""
    try:
        import matplotlib
    except ImportError:
        from dnfbot.errors import InputError

        raise InputError("--png needs matplotlib: pip install 'dnfbot[train]' (or matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _korean_font()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    days = stats["per_day"]
    ax = axes[0][0]
    xs = list(days)
    ans = [days[d].get("answered", 0) for d in xs]
    ref = [days[d].get("refused", 0) for d in xs]
    ax.bar(xs, ans, label="answered")
    ax.bar(xs, ref, bottom=ans, label="refused")
    ax.plot(xs, [days[d].get("down", 0) for d in xs], "k.-", label="rated down")
    ax.set_title(f"answers per day (refusal rate {stats['refusal_rate']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    for ax, name in ((axes[0][1], "category1"), (axes[1][0], "backend")):
        table = {k: d for k, d in stats["down_rate"][name].items() if d["rated"]}
        ax.barh(list(table), [d["down_rate"] for d in table.values()])
        ax.set_xlim(0, 1)
        ax.set_title(f"down-rate by {name} (down / rated)", fontsize=9)
        for i, d in enumerate(table.values()):
            ax.text(min(d["down_rate"], 0.9), i, f" {d['down']}/{d['rated']}", va="center", fontsize=7)
    ax = axes[1][1]
    top = stats["most_refused"][:8][::-1]
    ax.barh([t["question"][:28] for t in top], [t["refused"] for t in top])
    ax.set_title("most refused questions", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def to_text(s: dict) -> str:
    f = s["feedback"]
    lines = [
        f"answer log {s['db']}: {s['answers']} answers ({', '.join(f'{k} {v}' for k, v in s['by_channel'].items())})"
        f", {s['first']} … {s['last']}",
        f"questions {s['questions']}: answered {s['answered']}, refused {s['refused']} "
        f"(refusal rate {s['refusal_rate']}); chit-chat {s['chitchat']}",
        f"feedback: {f['rows']} rows on {f['rated_answers']} answers — 👍 {f['up']}, 👎 {f['down']}, "
        f"corrections {f['corrections']}, comments {f['comments']}",
    ]
    for name, table in s["down_rate"].items():
        if table:
            parts = [f"{k} {d['down']}/{d['rated']}" for k, d in table.items()]
            lines.append(f"down-rate by {name}: " + ", ".join(parts))
    if s["most_refused"]:
        lines.append("most refused (what the guides are missing):")
        lines += [f"  {d['refused']}× {d['question']}" for d in s["most_refused"]]
    if s["most_downvoted"]:
        lines.append("most downvoted:")
        lines += [f"  👎{d['down']} 👍{d['up']} {d['question']}" for d in s["most_downvoted"]]
    return "\n".join(lines)
