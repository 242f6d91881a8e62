"""Model-editor prompts: versions, the sandbox, and reading the many shapes of a model's answer."""

from __future__ import annotations

import pytest

from app.editors.prompts import (
    AnswerCutOff,
    MalformedAnswer,
    PromptError,
    parse_answer,
    parse_first_error,
    template_for,
)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("<edited>The capital is Paris.</edited>", "The capital is Paris."),
        ("Sure! Here is the fix:\n<edited>\nLine one.\nLine two.\n</edited>\nI changed one word.",
         "Line one.\nLine two."),
        ("```\nThe capital is Paris.\n```\nHope this helps.", "The capital is Paris."),
        ("```text\nA fenced answer.\n```", "A fenced answer."),
        ("Here is the corrected response:\n\nThe capital is Paris.", "The capital is Paris."),
        ("Corrected:\nThe capital is Paris.", "The capital is Paris."),
        ("The capital is Paris.", "The capital is Paris."),
        ("<EDITED>upper-case tags</EDITED>", "upper-case tags"),
        ("<edited>never closed, ends here.", "never closed, ends here."),
        ("<response>another tag</response>", "another tag"),
    ],
)
def test_parse_answer_finds_the_response(answer: str, expected: str) -> None:
    assert parse_answer(answer) == expected


@pytest.mark.parametrize("answer", ["", "   \n", None, "Here is the corrected response:\n"])
def test_empty_answers_are_malformed(answer) -> None:
    with pytest.raises(MalformedAnswer):
        parse_answer(answer)


def test_an_answer_cut_at_the_token_cap_is_malformed_unless_its_tags_closed() -> None:
    with pytest.raises(MalformedAnswer, match="cut off"):
        parse_answer("<edited>The capital of France is Par", truncated=True)
    assert parse_answer("<edited>Done.</edited> and then more", truncated=True) == "Done."


def test_cut_off_answers_are_not_retried_but_empty_ones_are() -> None:
    from app.editors.client import describe

    with pytest.raises(AnswerCutOff) as cut:
        parse_answer("<edited>half", truncated=True)
    assert describe(cut.value)[1] is False
    with pytest.raises(MalformedAnswer) as empty:
        parse_answer("")
    assert describe(empty.value)[1] is True


def test_first_error_of_the_two_stage_prompt() -> None:
    assert parse_first_error("<error>Lyon</error>") == "Lyon"
    assert parse_first_error("<error>NONE</error>") is None
    assert parse_first_error("none.") is None
    assert parse_first_error('"Lyon"') == "Lyon"


def test_versions_are_content_hashes() -> None:
    one, two = template_for("one_stage"), template_for("two_stage")
    assert one.version == template_for("one_stage").version
    assert one.version != two.version and len(one.version) == 12
    custom_a = template_for("custom", "Fix: {{ response }}")
    custom_b = template_for("custom", "Fix this: {{ response }}")
    assert custom_a.version != custom_b.version


def test_templates_render_guidelines_and_the_stricter_retry() -> None:
    template = template_for("one_stage")
    plain = template.render(0, prompt="Q?", response="A.", guidelines="Be kind.", budget=0.3, stricter=False)
    strict = template.render(0, prompt="Q?", response="A.", guidelines="", budget=0.3, stricter=True)
    assert "Be kind." in plain and "<response>\nA.\n</response>" in plain
    assert "changed too much" in strict and "changed too much" not in plain
    assert "Guidelines" not in strict


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "empty"),
        ("{% if %}{{ response }}", "line 1"),
        ("Fix the text please", "never uses"),
        ("{{ response.__class__.__mro__ }}", "cannot be rendered"),  # the sandbox refuses
        ("{{ undefined_name }} {{ response }}", "cannot be rendered"),
    ],
)
def test_custom_templates_are_checked(source: str, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        template_for("custom", source)


def test_unknown_prompt_kind() -> None:
    with pytest.raises(PromptError, match="unknown prompt kind"):
        template_for("three_stage")
