# a journal as a finished million-clip run leaves it: one done row per clip (the report's columns)
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from dub.manifests.schema import REPORT_SCHEMA

N = 1_000_000
rows = {n: [None] * N for n in REPORT_SCHEMA.names}
rows["video_id"] = [f"v{i:07d}" for i in range(N)]
rows["path"] = [f"/work/exp/fs/test/silent/fs0-test-{i % 200:05d}.mp4" for i in range(N)]
rows["status"] = ["done"] * N
rows["output_mp4"] = [f"OUT/mp4/v{i:07d}_fs0-test-{i % 200:05d}.mp4" for i in range(N)]
rows["finished_at"] = ["2026-12-06T12:00:00"] * N
rows["prompt"] = ["a green gem sliding into the walls: bell ding; a blue box bouncing on the floor: low tom thump"] * N
for name in REPORT_SCHEMA.names:
    if name.startswith("t_") or name in ("audio_duration_s",):
        rows[name] = [1.0] * N
    if name == "num_windows":
        rows[name] = [1] * N
t = pa.table(
    {n: pa.array(rows[n], type=REPORT_SCHEMA.field(n).type) for n in REPORT_SCHEMA.names}, schema=REPORT_SCHEMA
)
os.makedirs("OUT/journal", exist_ok=True)
pq.write_table(t, f"OUT/journal/part-{time.time_ns()}-x.parquet")
print(t.num_rows, t.nbytes / 1e6, "MB in Arrow")
