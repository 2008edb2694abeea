"""Data contracts: Arrow schemas of the manifest and reports, atomic Parquet I/O, stable ids."""
