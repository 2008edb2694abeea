"""The weights-free demo stack: hand-made video/text features and a Griffin-Lim codec.

For demos, tests and CPU-only laptops. Nothing here is learned, so a network trained on these
features is a working toy, not MMAudio quality.
"""

from __future__ import annotations

from dub.model.demo.codec import DemoCodec
from dub.model.demo.features import DemoEncoders

__all__ = ["DemoCodec", "DemoEncoders"]
