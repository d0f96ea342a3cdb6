"""Prompt extension's pure parts: where the LLM lives, and the cut to the video model's tokens."""

from __future__ import annotations

import pytest

from cogvx.errors import InputError
from cogvx.prompting.extend import SYSTEM_PROMPT, fit_tokens, plan_llm, require


@pytest.mark.parametrize(
    ("free", "need", "want"),
    [
        (None, 15.2, ("cpu", "cpu")),  # no GPU: runs on the CPU
        (60.0, 15.2, ("cuda", "cuda")),  # fits beside the video model: stays
        (17.1, 15.2, ("cpu", "cuda")),  # short by the headroom: parked in CPU memory
        (4.0, 15.2, ("cpu", "cuda")),
    ],
)
def test_llm_placement(free, need, want):
    p = plan_llm(free, need)
    assert (p.resident, p.run_on) == want
    assert ("GiB free" in p.reason) == (free is not None)


def words_count(text: str) -> int:
    return len(text.split()) + 1  # + the end-of-sequence token, as T5 counts


def test_fit_cuts_at_a_word_to_the_limit():
    text = " ".join(f"w{i}" for i in range(300))
    cut = fit_tokens(text, words_count, 226)
    assert words_count(cut) == 226 and text.startswith(cut) and cut.endswith("w224")
    assert fit_tokens("short one", words_count, 226) == "short one"
    assert fit_tokens("a b c", words_count, 1) == ""


def test_fit_cuts_text_without_spaces_within_its_word():
    text = "一只狐狸" * 100  # Chinese has no spaces to cut at
    cut = fit_tokens(text, len, 226)
    assert cut == text[:226]
    assert fit_tokens("xy " + text, len, 226) == "xy"  # a word that fits is still a word cut


def test_missing_llm_names_the_variable():
    with pytest.raises(InputError, match="extend_prompt needs a prompt LLM.*COGVX_PROMPT_WEIGHTS"):
        require(None)


def test_system_prompt_asks_for_the_caption_style_in_the_window():
    assert "at most 150 words" in SYSTEM_PROMPT and "camera" in SYSTEM_PROMPT
