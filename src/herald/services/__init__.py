"""Use cases: short functions over a database connection, raising domain errors. Each takes
the caller's Principal where tenancy matters, so scoping is enforced in one layer."""
