"""Ray programs (ingest, generate, extract, train, report, bench) composed from `model` and `manifests`.

Imports flow one way: dub -> workflows -> (model, manifests). Nothing here is imported by those two.
"""
