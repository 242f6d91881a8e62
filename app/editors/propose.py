"""One item in, one guarded model edit out.

The minimality guard measures the model's edit with the label engine, as a human submit is measured
(`annotation.analyse`, the project's tokenizer). Above the project's budget the model gets one retry
with a stricter instruction; if that edit is still above, the smaller of the two edits is kept and
flagged `not_minimal` (the submit flags it the same way), never dropped. The kept edit's analysis goes
with the proposal, so the submit that stores it need not compute the same labels again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.editors.client import EditorClient
from app.editors.prompts import PromptTemplate, parse_answer, parse_first_error
from app.models import Outcome
from app.services.annotation import Analysed, analyse


@dataclass(frozen=True)
class Target:
    """What the editor sees of an item and its project."""

    prompt: str
    original: str
    tokenizer: str
    budget: float
    guidelines: str = ""


@dataclass(frozen=True)
class Proposal:
    outcome: Outcome  # edited | no_change_needed
    text: str
    edit_rate: float
    not_minimal: bool
    stricter_retry: bool
    prompt_version: str
    model: str
    analysed: Analysed  # of `text` against the target's original


async def _answer(client: EditorClient, template: PromptTemplate, target: Target, stricter: bool,
                  on_retry: Callable[[str], None]) -> str:
    variables = {"prompt": target.prompt, "response": target.original, "guidelines": target.guidelines,
                 "budget": target.budget, "stricter": stricter}

    async def edited(stage: int, **extra) -> str:
        answer = await client.chat(template.render(stage, **variables, **extra))
        return parse_answer(answer.text, truncated=answer.truncated)

    if len(template.stages) == 1:
        return await client.retrying(lambda: edited(0), on_retry)

    async def first_error() -> str | None:
        answer = await client.chat(template.render(0, **variables))
        return parse_first_error(answer.text)

    error = await client.retrying(first_error, on_retry)
    if error is None:
        return target.original
    return await client.retrying(lambda: edited(1, first_error=error), on_retry)


def _analysed(target: Target, text: str) -> Analysed:
    return Analysed(target.tokenizer, target.original, text, analyse(target.tokenizer, target.original, text))


async def propose(client: EditorClient, template: PromptTemplate, target: Target,
                  on_retry: Callable[[str], None] = lambda _: None) -> Proposal:
    """The editor's guarded edit of `target`; raises EditorFailure when the endpoint keeps failing."""
    def proposal(edit: Analysed, stricter: bool) -> Proposal:
        outcome = Outcome.NO_CHANGE_NEEDED if edit.edited == target.original else Outcome.EDITED
        rate = edit.analysis.stats.edit_rate
        return Proposal(outcome, edit.edited, rate, rate > target.budget, stricter, template.version,
                        client.config.model, edit)

    first = _analysed(target, (await _answer(client, template, target, False, on_retry)).replace("\r\n", "\n"))
    rate = first.analysis.stats.edit_rate
    if rate <= target.budget:
        return proposal(first, False)
    retried = _analysed(target, (await _answer(client, template, target, True, on_retry)).replace("\r\n", "\n"))
    return proposal(retried if retried.analysis.stats.edit_rate <= rate else first, True)
