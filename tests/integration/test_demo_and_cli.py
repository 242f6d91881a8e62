"""`redline demo setup` (idempotent, admin password once) and `redline createuser`."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import main as cli
from app.db import session_scope
from app.models import Item, User
from app.security import verify_password


def test_demo_setup_is_idempotent(settings_env, tmp_path):
    items = tmp_path / "items.jsonl"
    rows = [{"prompt": f"P{i}", "response": f"R{i}", "model": "m"} for i in range(3)]
    items.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first = CliRunner().invoke(cli, ["demo", "setup", "--items", str(items)])
    assert first.exit_code == 0, first.output
    # The credentials come last, framed, so they stand out of `make run`'s setup output.
    banner = first.output.strip().splitlines()[-6:]
    assert banner[0] == banner[-1] and set(banner[0]) == {"#"} and "username: admin" in banner[2]
    password = banner[3].split("password: ")[1].split()[0]
    with session_scope() as session:
        admin = session.scalars(select(User).where(User.username == "admin")).one()
        assert verify_password(admin.password_hash, password)
    second = CliRunner().invoke(cli, ["demo", "setup", "--items", str(items)])
    assert second.exit_code == 0 and "password" not in second.output and "0 new item(s)" in second.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 3
        assert session.scalar(select(func.count()).select_from(User)) == 1


def test_createuser(settings_env):
    runner = CliRunner()
    ok = runner.invoke(cli, ["createuser", "rita", "--role", "reviewer"], input="long enough pw\nlong enough pw\n")
    assert ok.exit_code == 0 and "created reviewer rita" in ok.output
    taken = runner.invoke(cli, ["createuser", "rita"], input="long enough pw\nlong enough pw\n")
    assert taken.exit_code != 0 and "taken" in taken.output
    short = runner.invoke(cli, ["createuser", "sam"], input="short\nshort\n")
    assert short.exit_code != 0 and "at least 10" in short.output


def test_demo_setup_with_the_shipped_items(settings_env):
    result = CliRunner().invoke(cli, ["demo", "setup"])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Item)) > 0
