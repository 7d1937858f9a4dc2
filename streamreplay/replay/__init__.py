"""Play mode: serve recordings offline, byte-exact, on their timing, with faults on demand."""

from streamreplay.replay.faults import FAULTS, Fault, FaultSpecError, parse_faults
from streamreplay.replay.server import Replayed, ReplayServer

__all__ = ["FAULTS", "Fault", "FaultSpecError", "ReplayServer", "Replayed", "parse_faults"]
