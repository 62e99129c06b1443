"""Bulk inserts for the intake hot paths (CSV imports, identity resolution, consent).

`conn.execute(insert(table), rows)` builds and processes every row through SQLAlchemy's
compiler machinery; for batches of thousands of small rows that costs more than the database.
insert_many compiles the statement once per (table, columns, dialect), applies the columns' own
bind processors (so JSON, UTCDateTime and friends store exactly what the ORM path stores) and
hands the parameters to the driver's executemany.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

_Compiled = tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...], bool]
_cache: dict[tuple[str, tuple[str, ...], str, bool], _Compiled] = {}


def _compiled(conn: Connection, table: Table, names: tuple[str, ...], ignore_conflicts: bool) -> _Compiled:
    key = (table.name, names, conn.dialect.name, ignore_conflicts)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    make = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = make(table)
    if ignore_conflicts:
        statement = statement.on_conflict_do_nothing()
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(names))
    order = tuple(compiled.positiontup or ()) if compiled.positional else names
    unknown = set(order) - set(names)
    if unknown:
        raise ValueError(f"insert_many({table.name}): unexpected parameters {sorted(unknown)}")
    processors = tuple(table.c[name].type._cached_bind_processor(conn.dialect) for name in order)
    hit = (str(compiled), order, processors, bool(compiled.positional))
    _cache[key] = hit
    return hit


def insert_many(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *,
                ignore_conflicts: bool = False) -> int:
    """Insert rows (all with the same keys); returns how many rows were inserted when the driver
    reports it (-1 otherwise). `ignore_conflicts` skips rows that violate a unique constraint."""
    if not rows:
        return 0
    names = tuple(rows[0])
    sql, order, processors, positional = _compiled(conn, table, names, ignore_conflicts)
    pairs = tuple(zip(order, (_memo(p) if p else None for p in processors), strict=True))
    if positional:
        params: list[Any] = [tuple(p(r[n]) if p else r[n] for n, p in pairs) for r in rows]
    else:
        params = [{n: (p(r[n]) if p else r[n]) for n, p in pairs} for r in rows]
    return int(conn.exec_driver_sql(sql, params).rowcount)


def _memo(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A bind processor that converts each distinct hashable value once per call: a batch's rows
    mostly share the same timestamps (`now`) and namespaces."""
    seen: dict[Any, Any] = {}

    def run(value: Any) -> Any:
        try:
            return seen[value]
        except KeyError:
            out = seen[value] = process(value)
            return out
        except TypeError:  # unhashable (JSON objects and lists)
            return process(value)
    return run
