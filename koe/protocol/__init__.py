"""The Realtime protocol: dialects, session settings and typed events."""

from koe.protocol.dialect import *  # noqa: F403
from koe.protocol.events import *  # noqa: F403
from koe.protocol.settings import *  # noqa: F403
from koe.protocol import dialect as _dialect, events as _events, settings as _settings

__all__ = [*_dialect.__all__, *_settings.__all__, *_events.__all__]
