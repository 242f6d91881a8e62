"""Property-based fuzzing of /api/v1 from its own OpenAPI schema (schemathesis): no input gives a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from factories import make_corpus
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from app.db import session_scope
from app.main import create_app
from app.models import User
from app.services import api_tokens


@pytest.fixture
def admin_token(settings_env) -> str:
    with session_scope() as session:
        make_corpus(session)
        admin = session.query(User).filter_by(role="admin").first()
        _, secret = api_tokens.create_token(session, admin, "fuzz", sorted(api_tokens.SCOPES))
    return secret


@pytest.fixture
def api_schema(admin_token):
    """The schema as an API client reads it: /openapi.json needs a credential."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(), headers=headers).include(
        path_regex="^/api/v1/"
    )


@pytest.mark.slow
def test_no_input_gives_a_server_error(api_schema, admin_token):
    headers = {"Authorization": f"Bearer {admin_token}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error])

        no_server_error()
