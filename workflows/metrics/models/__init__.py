"""The networks behind the weighted metrics, each as its publisher released it (key names,
preprocessing), loaded from local files through `dub.model.weights.state_dicts`:

    panns.py             PANNs CNN14 16 kHz         FD / KL / IS-PANNs
    vggish.py            VGGish                     FD-VGG
    passt.py             PaSST-S 32 kHz             FD / KL / IS-PaSST
    synchformer_sync.py  Synchformer audio branch + sync head (visual branch: dub.model.encoders.synchformer)   DeSync
    htsat.py, roberta.py LAION-CLAP's audio and text towers (assembled in ../clap.py)             CLAP score
    imagebind.py         ImageBind huge's vision and audio towers                                 IB-score

The metric definitions that use them live one level up (embeddings.py, desync.py, clap.py, ib_score.py).
"""
