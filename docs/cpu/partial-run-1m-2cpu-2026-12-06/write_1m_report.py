# the end of a finished million-clip run: the report and the journal's compaction
from dub.workflows.generate.config import run_paths
from dub.workflows.generate.run import _write_report

paths = run_paths("OUT")
_write_report(paths, [f"v{i:07d}" for i in range(1_000_000)], [])
