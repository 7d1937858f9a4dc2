"""streamreplay: record streamed OpenAI-compatible answers chunk by chunk, replay them byte-exact."""

from streamreplay.endcause import EndCause

__all__ = ["EndCause", "__version__"]
__version__ = "0.1.0"
