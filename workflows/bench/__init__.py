"""`dub bench`: sub-benchmarks that print per-stage figures.

Each sub-benchmark is a module `workflows/bench/<name>.py` with
`run(options: BenchOptions) -> list[BenchRow]`. Targets are named in the rows (never
asserted in tests): a benchmark reports, a person judges.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

SUB_BENCHMARKS = ("media", "encoders", "generate", "train-step", "e2e")


@dataclass(frozen=True)
class BenchOptions:
    device: str = "auto"  # auto | cpu | cuda
    preset: str = "tiny"  # network/encoder sizes: tiny | demo | small_16k | ...
    batch_size: int = 1
    repeats: int = 5
    warmup: int = 1
    duration_s: float = 8.0
    extra: dict = field(default_factory=dict)


@dataclass
class BenchRow:
    bench: str
    stage: str
    median_ms: float
    batch_size: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    audio_s: float | None = None  # seconds of audio (or video) one call covers, for the real-time factor
    peak_mem_mb: float | None = None
    note: str = ""
    # measured figures a sub-benchmark adds to its JSON row beside the standard ones
    extra: dict = field(default_factory=dict)

    @property
    def rtf(self) -> float | None:
        """Real-time factor: time to process / duration processed (lower is faster)."""
        if not self.audio_s:
            return None
        return self.median_ms / 1000.0 / self.audio_s

    @property
    def clips_per_s(self) -> float | None:
        if self.median_ms <= 0:
            return None
        return self.batch_size * 1000.0 / self.median_ms

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("extra"))
        out["rtf"] = self.rtf
        out["clips_per_s"] = self.clips_per_s
        return out


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int, device: str) -> tuple[float, float | None]:
    """Median wall time of `fn` in ms (CUDA-synchronised) and peak CUDA memory in MB (None on CPU)."""
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return statistics.median(times), peak
