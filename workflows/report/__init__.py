"""`dub report`: score a generate run against reference audio and visual events.

config     what a report is asked for and what it produces (no imports from the rest)
scoring    one clip's metrics and features, the models loaded once
journal    clips scored so far, so a rerun after a crash scores only the rest
parallel   scoring on Ray actors (`workers > 1`)
page       the self-contained index.html
run        run_report: scoring, set-level metrics, report.parquet, summary.json, the page
"""
