"""podroute's BGP speaker: ExaBGP 5 supervised as a child, its line API typed, an Adj-RIB-In
per peer with import policy, and a Loc-RIB handed to the agent (see bgp/speaker.py)."""
from .errors import BGPError, CommandRejected, ConfigError, ExaBGPExited
from .model import BestRoute, PathAttrs, PeerConfig, PeerStatus, SpeakerConfig, SpeakerStatus
from .speaker import Speaker

__all__ = ["BGPError", "BestRoute", "CommandRejected", "ConfigError", "ExaBGPExited",
           "PathAttrs", "PeerConfig", "PeerStatus", "Speaker", "SpeakerConfig", "SpeakerStatus"]
