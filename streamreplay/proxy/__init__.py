"""Record mode: the aiohttp reverse proxy that forwards untouched and stores every read."""

from streamreplay.proxy.recorder import RecordingProxy

__all__ = ["RecordingProxy"]
