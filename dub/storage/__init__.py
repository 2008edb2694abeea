"""Run machinery every command shares, below everything else in dub (it imports nothing of dub):

atomic        files that appear whole or not at all (temporary name, fsync, rename)
temporaries   the temporary-name patterns, and removing a killed run's leftovers
journal       finished work as small Parquet parts, so a rerun does only the rest
lock          one writer per output folder
"""
