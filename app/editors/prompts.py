"""The prompts a model editor sends, and how its answers are read.

A template is one Jinja source per stage, rendered in a sandbox (a custom template is admin-written text,
and must not reach Python objects). Its version is a hash of its content, so every model edit names the
exact prompt that produced it. Variables: `prompt`, `response`, `guidelines` (the project's markdown),
`budget` (the project's minimality budget), `stricter` (the retry after an edit above budget) and, in a
two-stage template's second stage, `first_error` (what the first stage named).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from app.models import PromptKind

MAX_TEMPLATE_CHARS = 20_000

_RULES = """You edit an AI assistant's response. Correct only what is wrong in it (facts, reasoning, \
grammar, instructions not followed) and change as little as possible: keep every word that is right, \
word for word.{% if stricter %} Your last edit changed too much of the response. This time change only \
the words that are actually wrong and nothing else.{% endif %}
{% if guidelines %}
Guidelines of this project:
{{ guidelines }}
{% endif %}
Question:
{{ prompt }}

Response:
<response>
{{ response }}
</response>
"""

ONE_STAGE = _RULES + """
Return the whole corrected response between <edited> and </edited> and nothing else. If nothing is \
wrong, return the response unchanged."""

TWO_STAGE_LOCATE = _RULES + """
Quote the first wrong part of the response exactly, between <error> and </error>. If nothing is \
wrong, answer <error>NONE</error>."""

TWO_STAGE_CORRECT = _RULES + """
The first wrong part is: <error>{{ first_error }}</error>
Correct it, and anything after it that is wrong, with the smallest change. Return the whole corrected \
response between <edited> and </edited> and nothing else."""

BUILT_IN: dict[str, tuple[str, ...]] = {
    PromptKind.ONE_STAGE: (ONE_STAGE,),
    PromptKind.TWO_STAGE: (TWO_STAGE_LOCATE, TWO_STAGE_CORRECT),
}

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=64)
def _compiled(source: str) -> Template:
    """A stage's source compiled once per process: compiling costs a hundred times what rendering does, and
    a job renders the same few sources for every item."""
    return _ENV.from_string(source)


_SAMPLE = {"prompt": "What is 2 + 2?", "response": "2 + 2 = 5.", "guidelines": "", "budget": 0.35,
           "stricter": False, "first_error": "5"}


class PromptError(ValueError):
    """A custom template that cannot be used; the message says where."""


class MalformedAnswer(ValueError):
    """The model's answer holds no usable response (empty, or cut off at the token cap)."""


class AnswerCutOff(MalformedAnswer):
    """An answer that hit the token cap before it ended: asking again with the same cap gets the same cut
    (at temperature 0, exactly), so it is not retried."""


@dataclass(frozen=True)
class PromptTemplate:
    kind: str
    stages: tuple[str, ...]

    @property
    def version(self) -> str:
        """A hash of the template's content: the same text always has the same version."""
        canonical = json.dumps({"kind": self.kind, "stages": self.stages}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def render(self, stage: int, **variables) -> str:
        try:
            return _compiled(self.stages[stage]).render(**variables).strip()
        except TemplateError as exc:
            raise PromptError(f"the prompt template cannot be rendered: {exc}") from None


def template_for(kind: str, custom: str = "") -> PromptTemplate:
    """The built-in template of `kind`, or the custom one (validated: it parses and renders)."""
    if kind in BUILT_IN:
        return PromptTemplate(kind, BUILT_IN[kind])
    if kind != PromptKind.CUSTOM:
        raise PromptError(f"unknown prompt kind {kind!r}; choose one of {', '.join(k.value for k in PromptKind)}")
    return PromptTemplate(PromptKind.CUSTOM, (validate_custom(custom),))


def validate_custom(source: str) -> str:
    if not source.strip():
        raise PromptError("custom template: it is empty")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise PromptError(f"custom template: longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        _ENV.parse(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise PromptError(f"custom template, line {line}: {exc}" if line else f"custom template: {exc}") from None
    if "response" not in source:
        raise PromptError("custom template: it never uses {{ response }}, so the model would not see the response")
    PromptTemplate(PromptKind.CUSTOM, (source,)).render(0, **_SAMPLE)
    return source


# --- reading answers ------------------------------------------------------------------------------

_TAGGED = re.compile(r"<(edited|corrected|revised|response|answer)>[ \t]*\n?(.*?)\n?[ \t]*</\1>", re.S | re.I)
_OPEN_TAG = re.compile(r"<(edited|corrected|revised|response|answer)>", re.I)
_FENCED = re.compile(r"```[\w+-]*[ \t]*\n(.*?)\n?```", re.S)
_PREAMBLE = re.compile(
    r"^(sure|certainly|of course|okay|ok|here(?:'s| is| are)|below is|the (?:corrected|revised|edited)"
    r"|corrected|revised|edited)\b[^\n]*:[ \t]*(?:\n+|$)",
    re.I,
)
_ERROR = re.compile(r"<error>(.*?)</error>", re.S | re.I)


def parse_answer(answer: str | None, *, truncated: bool = False) -> str:
    """The edited response inside a model's answer: inside tags, else inside a code fence, else the text
    less a preamble line ("Here is the corrected response:"). Raises MalformedAnswer when nothing usable
    is there: an empty answer, or one cut off at the token cap (a cut edit would delete the tail)."""
    text = (answer or "").strip()
    if not text:
        raise MalformedAnswer("the model returned an empty answer")
    if match := _TAGGED.search(text):
        return match.group(2).strip("\n")
    if truncated:
        raise AnswerCutOff("the answer was cut off at max tokens before it ended (raise the editor's max tokens)")
    if match := _OPEN_TAG.search(text):  # an opening tag the model never closed: the rest is the response
        text = text[match.end():].strip()
    elif match := _FENCED.search(text):
        return match.group(1).strip("\n")
    text = _PREAMBLE.sub("", text, count=1).strip()
    if not text:
        raise MalformedAnswer("the answer holds only a preamble, no response")
    return text


def parse_first_error(answer: str | None) -> str | None:
    """The first stage's finding: the quoted wrong span, or None when it says nothing is wrong."""
    text = (answer or "").strip()
    if not text:
        raise MalformedAnswer("the model returned an empty answer")
    match = _ERROR.search(text)
    span = (match.group(1) if match else text).strip().strip("\"'")
    return None if not span or span.upper().rstrip(".") == "NONE" else span
