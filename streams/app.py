"""The Faust app: ``faust -A streams.app worker`` (or ``tamiyo worker``) runs it.

Agents: ``telemetry`` (topology + health → graph tables), ``policy`` (outcomes → decisions and
commands), ``archive`` (commands → experience). Processing is at-least-once; effects are
idempotent by decision id.
"""

from __future__ import annotations

from streams.factory import create_app
from tamiyo.config import Settings

app, context = create_app(Settings.from_env())
