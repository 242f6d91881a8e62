"""Login, logout, and the start page that sends each role where its work is."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from app.deps import current_auth, current_user, get_db
from app.models import Role, User
from app.security import (
    PRE_CSRF_COOKIE,
    SESSION_COOKIE,
    AuthContext,
    cookie_kwargs,
    end_session,
    new_token,
    start_session,
    verify_password,
)
from app.services.users import AccountError, authenticate, get_user, reset_password
from app.settings import get_settings
from app.templating import render

router = APIRouter()

HOME_BY_ROLE = {
    Role.ADMIN: "/admin/dashboard",
    Role.REVIEWER: "/review",
    Role.ANNOTATOR: "/annotate",
    Role.RESEARCHER: "/jobs",
}


def _safe_next(target: str) -> str:
    """Only same-site paths: an attacker's `next=https://evil` must not turn login into a redirector."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""


def _login_page(request: Request, *, status_code: int = 200, **context) -> Response:
    token = request.cookies.get(PRE_CSRF_COOKIE) or new_token()
    response = render(request, "auth/login.html", status_code=status_code, csrf_token=token, **context)
    response.set_cookie(PRE_CSRF_COOKIE, token, **cookie_kwargs())
    return response


@router.get("/login")
def login_form(request: Request, next: str = "") -> Response:
    if getattr(request.state, "auth", None):
        return RedirectResponse(_safe_next(next) or "/", status_code=303)
    return _login_page(request, next_url=_safe_next(next))


@router.post("/login")
def login(
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    next: str = Form(""),
    db: Session = Depends(get_db),
) -> Response:
    ip = request.client.host if request.client else ""
    try:
        user = authenticate(db, username, password, ip)
    except AccountError as exc:  # wrong credentials (401) or too many attempts (429)
        db.commit()  # keep the failed attempt: it is what throttling counts
        return _login_page(request, status_code=exc.status_code, error=str(exc), username=username, next_url=next)
    token = start_session(db, user, request.headers.get("user-agent", ""))
    db.commit()
    response = RedirectResponse(_safe_next(next) or "/", status_code=303)
    response.set_cookie(SESSION_COOKIE, token, **cookie_kwargs(get_settings().session_max_age_s))
    response.delete_cookie(PRE_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(auth: AuthContext = Depends(current_auth), db: Session = Depends(get_db)) -> Response:
    end_session(db, auth.session_id)
    db.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
def home(user: User = Depends(current_user)) -> Response:
    return RedirectResponse(HOME_BY_ROLE[Role(user.role)], status_code=303)


@router.get("/account")
def account(request: Request, user: User = Depends(current_user)) -> Response:
    return render(request, "auth/account.html", title="Your account")


@router.post("/account/password")
def change_password(
    request: Request,
    current: str = Form(...),
    new: str = Form(...),
    user: User = Depends(current_user),
    db: Session = Depends(get_db),
) -> Response:
    stored = get_user(db, user.id)
    if not verify_password(stored.password_hash, current):
        return render(request, "auth/account.html", status_code=400, error="The current password is wrong.")
    try:
        reset_password(db, stored, new, actor=stored)  # ends every session, this one included
    except AccountError as exc:
        return render(request, "auth/account.html", status_code=exc.status_code, error=str(exc))
    db.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
