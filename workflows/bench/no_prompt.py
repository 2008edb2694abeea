"""The same manifest with every prompt cleared, for benchmarks where the look must decide the
sound (foley-synth's prompts name the sound class).

    python -m dub.workflows.bench.no_prompt IN.parquet OUT.parquet
"""

from __future__ import annotations

import sys
from pathlib import Path


def strip_prompts(src: str | Path, dst: str | Path) -> Path:
    import pyarrow as pa

    from dub.manifests.io import read_manifest, write_parquet_atomic

    table = read_manifest(src)
    i = table.schema.get_field_index("prompt")
    field = table.schema.field(i)
    return write_parquet_atomic(table.set_column(i, field, pa.nulls(len(table), field.type)), dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    strip_prompts(sys.argv[1], sys.argv[2])
