"""Metrics for `dub report`: Fréchet distance, onset and AV-Align sync scores, classifier scores,
embedding backends (PANNs, VGGish, PaSST, weights-free log-mel), DeSync, CLAP score, pictures
for the HTML page. The networks themselves are in `models/`.

Public entry points:
    fad.frechet_distance(a, b)                 two (N, D) embedding sets -> float
    onsets.detect_onsets / score_onsets        MMAudio eval_onsets-style accuracy and AP, P/R/F1 at +-50 ms
    av_align.av_align_score                    audio onsets vs video motion peaks (IoU)
    embeddings.build_backend(name, locator)    'panns' | 'vggish' | 'passt' | 'logmel'
    classifiers.kl_softmax / inception_score   from classifier logits
    desync.build_offset_predictor(locator)     full Synchformer offsets, first/last 14 segments
    clap.build_clap(locator)                   LAION-CLAP text/audio embeddings; clap.clap_score
"""

from dub.workflows.metrics.fad import frechet_distance

__all__ = ["frechet_distance"]
