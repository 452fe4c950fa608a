"""schemathesis against the server's own OpenAPI schema: generated requests to every operation,
a bounded number each; whatever they hold, the answer is never a 5xx. The limits are set tight
so that any request the server accepts is cheap to run."""

import pytest
from hypothesis import HealthCheck, settings

from ldmkit.apps.server import Limits, ServerSettings, create_app

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

app = create_app(ServerSettings(limits=Limits(max_side=64, max_steps=3, max_images=2, max_upload_pixels=64 * 64)))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])
