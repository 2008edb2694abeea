"""Helpers for tests/test_codec.py.

`python -m tests.codec_helpers FIXTURE_ROOT OUT.safetensors` computes the log mels of the
fixture waves with dub.model.codec.mel and saves them as {"mel16k": ..., "mel44k": ...}. The test runs it
in a fresh process with MKL_CBWR=COMPATIBLE: the fixtures were produced on MKL's CPU-independent
FFT code path, and that setting only takes effect before the process's first MKL call.
(Why it matters: the sine row's quiet bins sit ~140 dB below its peaks, so float32 FFT rounding,
which differs between MKL's AVX2/AVX-512 paths, moves their log mel by ~1e-3.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MEL_SETS = ("mel16k", "mel44k")


def compute_fixture_mels(root: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    from dub.model.codec.mel import MelConfig, MelConverter

    out = {}
    for name in MEL_SETS:
        folder = root / name
        config = MelConfig.from_dict(json.loads((folder / "config.json").read_text()))
        wave = load_file(str(folder / "io.safetensors"))["wave"]
        with torch.no_grad():
            out[name] = MelConverter(config)(wave).contiguous()
    return out


def main(argv: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    root, out_path = Path(argv[0]), argv[1]
    save_file(compute_fixture_mels(root), out_path)


if __name__ == "__main__":
    main(sys.argv[1:])
