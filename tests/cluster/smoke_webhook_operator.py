"""A minimal kopf operator for the webhook smoke test: it rejects ConfigMaps with mode=forbidden.

Configured by environment variables set by the test: the port and TLS files of the webhook server.
"""

from __future__ import annotations

import os
from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.admission.server = kopf.WebhookServer(
        addr="127.0.0.1",
        port=int(os.environ["SMOKE_WEBHOOK_PORT"]),
        host="127.0.0.1",
        certfile=os.environ["SMOKE_WEBHOOK_CERT"],
        pkeyfile=os.environ["SMOKE_WEBHOOK_KEY"],
        cafile=os.environ["SMOKE_WEBHOOK_CA"],
    )
    settings.admission.managed = None  # the test writes its own ValidatingWebhookConfiguration
    settings.watching.server_timeout = 10


@kopf.on.validate("configmaps", id="smoke-deny-forbidden")
def deny_forbidden_mode(body: kopf.Body, **_: Any) -> None:
    if body.get("data", {}).get("mode") == "forbidden":
        raise kopf.AdmissionError(
            "data.mode: 'forbidden' is not allowed by the smoke-test webhook; set data.mode to 'allowed'",
            code=422,
        )
