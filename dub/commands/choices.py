"""The fixed choices of dub's options, as Enums: typer rejects anything else when it parses the
command line and lists the choices in `--help`. Literal values here keep `dub --help` free of
heavy imports; tests/test_cli.py checks each set against the code that consumes it."""

from __future__ import annotations

from enum import Enum


class Resize(str, Enum):
    """How frames are resized for CLIP and Synchformer."""

    fast = "fast"  # swscale's bicubic
    exact = "exact"  # torchvision's antialiased bicubic, as MMAudio's features were made


class Sampler(str, Enum):
    meanflow = "meanflow"
    euler = "euler"


class RescaleMode(str, Enum):
    std = "std"
    proj = "proj"
    none = "none"


class OutputFormat(str, Enum):
    mp4 = "mp4"
    wds = "wds"
    both = "both"


class AudioCodec(str, Enum):
    aac = "aac"
    flac = "flac"
    opus = "opus"


class SelectMetric(str, Enum):
    """How `--candidates` picks a clip's candidate."""

    av_align = "av-align"
    desync = "desync"
    clap = "clap"


class FeatureDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class Objective(str, Enum):
    meanflow = "meanflow"
    flow_matching = "flow-matching"


class ReportBackend(str, Enum):
    panns = "panns"
    vggish = "vggish"
    passt = "passt"
    logmel = "logmel"


class Skippable(str, Enum):
    desync = "desync"
    clap = "clap"
    ib = "ib"


def values(choices) -> tuple[str, ...]:
    """The plain strings of a list of choices (what the workflows take)."""
    return tuple(c.value if isinstance(c, Enum) else c for c in choices)
