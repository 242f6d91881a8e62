"""Settings → API tokens (/settings/tokens): create (the secret is shown once), list, revoke."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from app.deps import current_user, get_db
from app.models import User
from app.services import api_tokens
from app.services.datasets import MAX_ID
from app.templating import render

router = APIRouter(tags=["pages"], include_in_schema=False)


def _page(request: Request, db: Session, user: User, *, status_code: int = 200, **context) -> Response:
    return render(
        request, "tokens/list.html", status_code=status_code, title="API tokens",
        tokens=api_tokens.tokens_of(db, user), scopes=api_tokens.SCOPES,
        allowed=sorted(api_tokens.allowed_scopes(user)), **context,
    )


@router.get("/settings/tokens")
def list_tokens(request: Request, db: Session = Depends(get_db), user: User = Depends(current_user)) -> Response:
    return _page(request, db, user)


@router.post("/settings/tokens")
async def create_token(
    request: Request, db: Session = Depends(get_db), user: User = Depends(current_user)
) -> Response:
    form = await request.form()
    name, scopes = str(form.get("name", "")), [str(s) for s in form.getlist("scopes")]
    try:
        token, secret = api_tokens.create_token(db, db.get(User, user.id), name, scopes)
    except api_tokens.TokenError as exc:
        return _page(request, db, user, status_code=exc.status_code, error=str(exc), token_name=name)
    db.commit()
    # Rendered, not redirected: the secret exists only in this one response.
    return _page(request, db, user, status_code=201, created=token, secret=secret)


@router.post("/settings/tokens/{token_id}/revoke")
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_ID)], db: Session = Depends(get_db),
    user: User = Depends(current_user),
) -> Response:
    # Unknown or someone else's: nothing to revoke, and nothing to reveal about it.
    with contextlib.suppress(api_tokens.TokenError):
        api_tokens.revoke(db, token_id, db.get(User, user.id))
    db.commit()
    return RedirectResponse("/settings/tokens", status_code=303)
