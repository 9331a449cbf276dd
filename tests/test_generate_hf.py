"""The `hf` generation back end: stop-string handling, streaming that joins to exactly the non-streamed answer
(and ends when generation ends), the original beam-search defaults, and the RAG back end on a tiny GPTNeoX."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnfbot.generate.hf import DecodeOptions, _visible, clean_answer


def test_clean_answer_cuts_a_hallucinated_next_turn():
    assert clean_answer(" 매일 회복됩니다.\n### 질문: 또 물어봐도 되나요?") == "매일 회복됩니다."
    assert clean_answer("  답입니다.  ") == "답입니다."
    assert clean_answer("### 질문: 바로 다음 질문") == ""


def test_visible_holds_back_a_possible_stop_string_prefix():
    assert _visible(" 답입니다.\n##") == ("답입니다.", False)  # '\n##' may become '\n### '
    assert _visible(" 답입니다.\n### 질문") == ("답입니다.", True)
    assert _visible(" 답") == ("답", False)


def test_decode_defaults_are_the_originals():
    d = DecodeOptions()
    assert (d.num_beams, d.no_repeat_ngram_size, d.top_p, d.max_new_tokens) == (3, 4, 0.9, 256)
    assert "top_p" not in d.generate_kwargs()  # only when sampling (transformers warns otherwise)
    assert DecodeOptions(do_sample=True).generate_kwargs()["top_p"] == 0.9


@pytest.fixture(scope="module")
def tiny(polyglot_tokenizer_dir, tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from dnfbot.models import init_tiny, load_model

    torch.set_num_threads(2)
    path = init_tiny("gpt-neox", polyglot_tokenizer_dir, tmp_path_factory.mktemp("gen") / "tiny")
    model, tok = load_model(path)
    return path, model, tok


def _direct(model, tok, prompt: str, opts: DecodeOptions) -> str:
    import torch

    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc, **opts.generate_kwargs(), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
    return clean_answer(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


@pytest.mark.timeout(120)  # a streamer waited on after it ended used to hang here
def test_greedy_streams_pieces_that_join_to_the_plain_answer(tiny):
    from dnfbot.generate.hf import generate_stream

    _, model, tok = tiny
    prompt = "### 질문: 피로도는 언제 회복되나요?\n\n### 답변:"
    opts = DecodeOptions(num_beams=1, max_new_tokens=12, no_repeat_ngram_size=0)
    pieces = list(generate_stream(model, tok, prompt, opts))
    assert len(pieces) > 1  # streamed, not in one piece
    # the random model says nonsense, but exactly the nonsense of a plain greedy generate()
    assert "".join(pieces) == _direct(model, tok, prompt, opts)


@pytest.mark.timeout(120)
def test_beam_search_answers_in_one_piece(tiny):
    from dnfbot.generate.hf import generate_stream

    _, model, tok = tiny
    prompt = "### 질문: 에픽 장비는 어떻게 얻나요?\n\n### 답변:"
    opts = DecodeOptions(max_new_tokens=8)  # 3 beams, no_repeat_ngram_size 4
    pieces = list(generate_stream(model, tok, prompt, opts))
    assert len(pieces) == 1 and pieces[0] == _direct(model, tok, prompt, opts)


@pytest.mark.timeout(120)
def test_hf_generator_answers_a_rag_request(tiny):
    from dnfbot.config import GenerationSettings
    from dnfbot.errors import InputError
    from dnfbot.generate import GenerationRequest, Passage, get_generator

    path, _, _ = tiny
    gen = get_generator("hf", settings=GenerationSettings(backend="hf", model=str(path)))
    req = GenerationRequest(
        question="피로도는 언제 회복되나요?",
        passages=[Passage("c1", "1", "피로도", 0, "피로도는 매일 오전 6시에 회복됩니다.", 1.0)],
        max_new_tokens=6,
    )
    prompt = gen.prompt(req)
    assert "피로도는 매일 오전 6시에 회복됩니다." in prompt and not prompt.endswith(" ")
    assert isinstance(gen.generate(req), str)
    with pytest.raises(InputError, match="generation.model"):
        get_generator("hf", settings=GenerationSettings(backend="hf"))
    with pytest.raises(InputError, match="does not exist"):
        get_generator("hf", settings=GenerationSettings(backend="hf", model=str(Path(path).parent / "nope")))
