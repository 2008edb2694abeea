"""summary.py OUT [JSON]: median [min, max] samples/s of each run's 50-step intervals after the
first (which holds the build), from OUT/runs/*/metrics.csv."""

import csv
import json
import statistics
import sys
from pathlib import Path

rows = {}
for f in sorted(Path(sys.argv[1]).glob("runs/*/metrics.csv")):
    r = list(csv.DictReader(f.open()))
    later = [float(x["samples_per_s"]) for x in r if int(x["step"]) > 50]
    rows[f.parent.name] = {
        "samples_per_s_median": round(statistics.median(later), 1),
        "min": round(min(later), 1),
        "max": round(max(later), 1),
        "intervals": len(later),
        "first_interval_s": round(float(r[0]["elapsed_s"]), 1),
        "elapsed_400_s": round(float(r[-1]["elapsed_s"]), 1),
    }
for name, row in rows.items():
    print(name, row)
if len(sys.argv) > 2:
    Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
