"""Admin pages for accounts: list, create, change role, reset password, (de)activate."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.models import Role, User
from app.services import users as accounts
from app.templating import render

router = APIRouter(prefix="/admin/users")
admin_only = require_roles(Role.ADMIN)


def _page(request: Request, db: Session, *, status_code: int = 200, **context) -> Response:
    people = db.scalars(select(User).order_by(User.username)).all()
    return render(
        request, "admin/users.html", status_code=status_code, title="Users", people=people,
        roles=[r.value for r in Role], username_pattern=accounts.USERNAME_PATTERN, **context,
    )


@router.get("")
def list_users(request: Request, _admin: User = Depends(admin_only), db: Session = Depends(get_db)) -> Response:
    return _page(request, db, flash=request.query_params.get("done"), flash_kind="ok")


@router.post("")
def create(
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    role: str = Form(...),
    display_name: str = Form(""),
    admin: User = Depends(admin_only),
    db: Session = Depends(get_db),
) -> Response:
    try:
        accounts.create_user(db, username, password, role, display_name=display_name, actor=admin)
    except accounts.AccountError as exc:
        db.rollback()
        return _page(request, db, status_code=exc.status_code, flash=str(exc), flash_kind="error")
    db.commit()
    return RedirectResponse(f"/admin/users?done=Created+{username.strip()}", status_code=303)


def _change(request: Request, db: Session, user_id: int, action, message: str) -> Response:
    try:
        action(accounts.get_user(db, user_id))
    except accounts.AccountError as exc:
        db.rollback()
        return _page(request, db, status_code=exc.status_code, flash=str(exc), flash_kind="error")
    db.commit()
    return RedirectResponse(f"/admin/users?done={message}", status_code=303)


@router.post("/{user_id}/active")
def set_active(
    request: Request, user_id: int, active: bool = Form(...),
    admin: User = Depends(admin_only), db: Session = Depends(get_db),
) -> Response:
    message = "Activated" if active else "Deactivated"
    return _change(request, db, user_id, lambda u: accounts.set_active(db, u, active, admin), message)


@router.post("/{user_id}/role")
def set_role(
    request: Request, user_id: int, role: str = Form(...),
    admin: User = Depends(admin_only), db: Session = Depends(get_db),
) -> Response:
    return _change(request, db, user_id, lambda u: accounts.set_role(db, u, role, admin), "Role+changed")


@router.post("/{user_id}/password")
def reset_password(
    request: Request, user_id: int, password: str = Form(...),
    admin: User = Depends(admin_only), db: Session = Depends(get_db),
) -> Response:
    return _change(
        request, db, user_id, lambda u: accounts.reset_password(db, u, password, admin), "Password+reset"
    )
