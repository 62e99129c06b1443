"""The system of record and the work queue: tables, engine, queries (SQL first)."""
