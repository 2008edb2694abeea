"""dub: synchronized soundtracks for silent videos, at dataset scale, offline."""

__version__ = "0.1.0"
