"""The synthesis prompt: an editable template file with a [system] and a [user] section.

The packaged template (dnfbot/prompts/synth_qa.txt) asks for a summary of the passage as one question plus a
long (5+ sentences), medium (<= 3) and short (exactly 1) answer in Korean, labelled 질문 / 장문 / 중문 / 단문 and
separated by ###: three lengths of one answer are what `data rm` ranks (long > medium > short). Only {subject} and {passage} are substituted, in one
pass, so braces in a passage or elsewhere in the template are left as they are.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dnfbot.errors import InputError
from dnfbot.io import read_text

_PLACEHOLDER = re.compile(r"\{(subject|passage)\}")
_SECTION = re.compile(r"^\[(system|user)\][ \t]*$", re.M)


@dataclass(frozen=True)
class PromptTemplate:
    system: str
    user: str
    source: str  # file the template came from (for messages)

    @property
    def digest(self) -> str:
        """Part of every record's key: editing the template re-synthesises everything."""
        return hashlib.sha256(f"{self.system}\x00{self.user}".encode()).hexdigest()[:16]

    def messages(self, subject: str, passage: str) -> list[dict]:
        values = {"subject": subject, "passage": passage}

        def fill(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)

        msgs = [{"role": "user", "content": fill(self.user)}]
        if self.system:
            msgs.insert(0, {"role": "system", "content": fill(self.system)})
        return msgs


def packaged_template_text() -> str:
    return resources.files("dnfbot").joinpath("prompts/synth_qa.txt").read_text(encoding="utf-8")


def load_template(path: str | Path | None = None) -> PromptTemplate:
    """The packaged template, or the file at `path` (one-line InputError when unreadable or malformed)."""
    if path is None:
        return parse_template(packaged_template_text(), "dnfbot/prompts/synth_qa.txt")
    try:
        text = read_text(path)
    except PermissionError:
        raise InputError(f"{path}: template is not readable (permission denied)") from None
    return parse_template(text, str(path))


def parse_template(text: str, source: str = "<template>") -> PromptTemplate:
    marks = list(_SECTION.finditer(text))
    names = [m.group(1) for m in marks]
    if "user" not in names:
        raise InputError(f"{source}: template has no [user] section (expected lines '[system]' and '[user]')")
    if len(names) != len(set(names)):
        raise InputError(f"{source}: template repeats a section header")
    head = text[: marks[0].start()]
    if any(line.strip() and not line.lstrip().startswith("#") for line in head.splitlines()):
        raise InputError(f"{source}: text before the first section header (only '#' comments allowed there)")
    parts = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        parts[m.group(1)] = text[m.end() : end].strip("\n").strip()
    if "{passage}" not in parts["user"]:
        raise InputError(f"{source}: the [user] section must contain the placeholder {{passage}}")
    return PromptTemplate(parts.get("system", ""), parts["user"], source)
