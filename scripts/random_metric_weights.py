#!/usr/bin/env python3
"""Write full-size RANDOM weights for every metric model of `dub report` into a weights folder,
in the layouts the loaders read (the registry's .safetensors names), so that

    python scripts/random_metric_weights.py /tmp/metric_weights
    dub report RUN -o OUT --weights-dir /tmp/metric_weights --timings

times each metric at its real size on this machine without downloading anything. The scores
it prints are meaningless (random networks); only the timings and the wiring are real.
Models: PANNs CNN14 16k, VGGish, PaSST-S, full Synchformer (DeSync), LAION-CLAP HTSAT-base with
RoBERTa-base (its tokenizer files are the tiny test vocabulary: token ids only, for timing), ImageBind
huge's vision and audio towers (IB-score; the other modalities are not written, the loader ignores them).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _random_init(module):
    """Fill parameters created empty (ImageBind's towers leave initialisation to the checkpoint)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="weights folder to write (pass it to --weights-dir)")
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    from dub.model.weights.registry import WeightsRegistry
    from dub.workflows.metrics.clap import ClapModel, clap_htsat_base
    from dub.workflows.metrics.models.imagebind import IMAGEBIND_HUGE, ImageBindVisionAudio
    from dub.workflows.metrics.models.panns import CNN14_16K, Cnn14
    from dub.workflows.metrics.models.passt import PASST_S_SWA, PaSST
    from dub.workflows.metrics.models.synchformer_sync import FullSynchformer, FullSynchformerConfig
    from dub.workflows.metrics.models.vggish import VGGISH, VGGish
    from dub.workflows.metrics.weights import METRIC_WEIGHTS

    registry = WeightsRegistry(args.out)
    torch.manual_seed(0)
    builders = {
        "panns_cnn14_16k": lambda: Cnn14(CNN14_16K),
        "vggish": lambda: VGGish(VGGISH),
        "passt": lambda: PaSST(PASST_S_SWA),
        "synchformer": lambda: FullSynchformer(FullSynchformerConfig.released()),
        "laion_clap": lambda: ClapModel(clap_htsat_base()),
        "imagebind": lambda: _random_init(ImageBindVisionAudio(IMAGEBIND_HUGE)),  # the keys IB-score loads
    }
    for key, build in builders.items():
        spec = METRIC_WEIGHTS[key]
        target = registry.root / registry.known_file(spec.model_name, spec.file_name).stored_relpath
        start = time.perf_counter()
        state = {k: v.contiguous() for k, v in build().state_dict().items()}
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(target), metadata={"note": "random weights for timing, not a real model"})
        params = sum(v.numel() for v in state.values()) / 1e6
        print(f"{key:16s} {params:8.1f} M values -> {target} ({time.perf_counter() - start:.1f} s)")
    vocab_dir = registry.root / registry.known_file("roberta-base", "vocab.json").stored_relpath
    vocab_dir.parent.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ROOT / "tests" / "data" / "clap_fixture" / name, vocab_dir.parent / name)
    print(f"tokenizer files (tiny test vocabulary) -> {vocab_dir.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
