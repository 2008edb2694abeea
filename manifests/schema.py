"""Arrow schemas of the ingest manifest and the generation report.

The manifest has one row per scanned file (`dub ingest`); the generation report one row per
manifest row (`dub generate -o OUT` writes `OUT/report.parquet`). Both carry their schema
name and version in the Parquet metadata so a reader can tell them apart and say so.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_NAME_KEY = b"dub.schema"
SCHEMA_VERSION_KEY = b"dub.schema_version"

# Manifest row status. `duplicate`: same bytes as another row (same video_id); only the row
# named in `duplicate_of` is processed downstream, so `video_id` is unique among `ok` rows.
MANIFEST_STATUSES = ("ok", "error", "duplicate")

MANIFEST_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),  # content-derived (dub.manifests.ids)
    pa.field("path", pa.string(), nullable=False),  # as scanned (absolute)
    pa.field("size_bytes", pa.int64()),
    pa.field("mtime_ns", pa.int64()),  # with size: decides whether a re-ingest reprobes
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_kind", pa.string()),  # short code for grouping: empty, not_media, truncated, ...
    pa.field("error", pa.string()),  # a sentence for a person: what is wrong and what to do
    pa.field("duplicate_of", pa.string()),  # path of the row with the same content that is kept
    pa.field("container", pa.string()),  # mp4, mov, webm, avi, ...
    pa.field("video_codec", pa.string()),
    pa.field("pix_fmt", pa.string()),
    pa.field("width", pa.int32()),  # coded size; displayed size swaps when rotation is +-90
    pa.field("height", pa.int32()),
    pa.field("rotation", pa.int32()),  # display-matrix rotation, degrees counter-clockwise
    pa.field("fps", pa.float64()),  # average frame rate
    pa.field("is_vfr", pa.bool_()),
    pa.field("duration_s", pa.float64()),  # video stream: first frame start to last frame end
    pa.field("num_frames", pa.int64()),
    pa.field("has_audio", pa.bool_()),
    pa.field("audio_codec", pa.string()),
    pa.field("audio_sample_rate", pa.int32()),
    pa.field("audio_is_silent", pa.bool_()),  # null when there is no audio or it cannot be decoded
    pa.field("prompt", pa.string()),  # from the sidecar NAME.txt, else ""
    pa.field("probe_s", pa.float64()),  # seconds spent hashing + probing this file
]
MANIFEST_SCHEMA = pa.schema(MANIFEST_FIELDS, metadata={SCHEMA_NAME_KEY: b"manifest", SCHEMA_VERSION_KEY: b"1"})
# A manifest made by other tools must have these; the other columns are filled with nulls.
MANIFEST_REQUIRED = (
    "video_id",
    "path",
    "size_bytes",
    "status",
    "error",
    "container",
    "video_codec",
    "width",
    "height",
    "rotation",
    "fps",
    "duration_s",
    "num_frames",
    "has_audio",
    "audio_is_silent",
    "prompt",
)

# Generation report row status. `pending`: listed but not reached in this run (--limit, stop).
REPORT_STATUSES = ("done", "failed", "skipped", "pending")

REPORT_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("path", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("output_mp4", pa.string()),
    pa.field("output_shard", pa.string()),
    pa.field("output_audio", pa.string()),  # text-to-audio runs: the encoded audio file
    pa.field("prompt", pa.string()),  # the text the clip was generated with ("" = none); CLAP scores it
    pa.field("audio_duration_s", pa.float64()),
    pa.field("num_windows", pa.int32()),
    pa.field("config_hash", pa.string()),
    # --loudness: BS.1770 integrated loudness as generated and as written (null: undefined, i.e.
    # silence or under 400 ms, left as it was), the true peak written and whether it capped the gain
    # --candidates: every candidate's selection score (NaN: undefined) and the one kept
    pa.field("candidate_scores", pa.list_(pa.float64())),
    pa.field("candidate_chosen", pa.int32()),
    pa.field("candidate_metric", pa.string()),  # what chose it: av-align, desync (lower wins) or clap
    # where PANNs weights are present: AudioSet speech / music probabilities and top tags of the
    # clip written, and whether it is flagged for a --reject kind (every candidate was)
    pa.field("speech_prob", pa.float64()),
    pa.field("music_prob", pa.float64()),
    pa.field("audioset_tags", pa.list_(pa.string())),
    pa.field("audioset_tag_probs", pa.list_(pa.float64())),
    pa.field("content_rejected", pa.bool_()),
    pa.field("loudness_generated_lufs", pa.float64()),
    pa.field("loudness_lufs", pa.float64()),
    pa.field("true_peak_dbtp", pa.float64()),
    pa.field("loudness_peak_limited", pa.bool_()),
    pa.field("t_decode_s", pa.float64()),
    pa.field("t_features_s", pa.float64()),
    pa.field("t_generate_s", pa.float64()),
    pa.field("t_decode_audio_s", pa.float64()),
    pa.field("t_write_s", pa.float64()),
    pa.field("finished_at", pa.string()),  # ISO 8601, local time
]
REPORT_SCHEMA = pa.schema(REPORT_FIELDS, metadata={SCHEMA_NAME_KEY: b"generation_report", SCHEMA_VERSION_KEY: b"1"})
REPORT_REQUIRED = ("video_id", "status", "error")


def schema_name(schema: pa.Schema) -> str | None:
    """The `dub.schema` name stored with a table, or None for a foreign file."""
    value = (schema.metadata or {}).get(SCHEMA_NAME_KEY)
    return value.decode() if value else None
