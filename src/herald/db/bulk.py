"""Bulk inserts and lookups for the intake hot paths (CSV imports, identity resolution, consent).

`conn.execute(insert(table), rows)` builds and processes every row through SQLAlchemy's
compiler machinery; for batches of thousands of small rows that costs more than the database.
insert_many compiles the statement once per (table, columns, dialect), applies the columns' own
bind processors (so JSON, UTCDateTime and friends store exactly what the ORM path stores) and
hands the parameters to the driver's executemany.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, any_, bindparam, select
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
    # Column by column: itemgetter/map/zip run in C; only the columns with a bind processor
    # (JSON, UTCDateTime) call back into Python, once per distinct value where it can.
    columns = [map(_memo(p), map(itemgetter(n), rows)) if p else map(itemgetter(n), rows)
               for n, p in zip(order, processors, strict=True)]
    params: list[Any] = list(zip(*columns, strict=True))
    if not positional:
        params = [dict(zip(order, values, strict=True)) for values in params]
    return int(conn.exec_driver_sql(sql, params).rowcount)


def _memo(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A bind processor that converts each distinct value once per call: a batch's rows mostly
    share the same timestamps (`now`), namespaces, and small JSON values ({}, [], a few tags)."""
    seen: dict[Any, Any] = {}
    last: list[Any] = [_NOTHING, None]  # the last value and its result: rows often share the very object

    def run(value: Any) -> Any:
        if value is last[0]:
            return last[1]
        key = _key(value)
        if key is None:
            return process(value)
        try:
            out = seen[key]
        except KeyError:
            out = seen[key] = process(value)
        last[0], last[1] = value, out
        return out
    return run


_NOTHING = object()


def _key(value: Any) -> Any:
    """A hashable key that only equal values share, or None. Lists and dicts of strings (tags,
    attributes) are keyed by their items (so by order too, as JSON is); other containers are not
    memoised, since 1, 1.0 and True are equal keys but different JSON."""
    kind = value.__class__
    if kind is list:
        return (list, *value) if all(v.__class__ is str for v in value) else None
    if kind is dict:
        items = tuple(value.items())
        return (dict, *items) if all(v.__class__ is str for pair in items for v in pair) else None
    try:
        hash(value)
    except TypeError:
        return None
    return (kind, value)


_Lookup = tuple[str, tuple[str, ...], bool]
_lookups: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], str, int], _Lookup] = {}
_IN_SIZES = (8, 32, 128, 512, 1024, 2048)  # IN lists are padded to one of these lengths: few statements to compile


def select_in(conn: Connection, table: Table, columns: Sequence[str], equal: Mapping[str, Any], in_column: str,
              values: Sequence[Any]) -> list[tuple[Any, ...]]:
    """SELECT columns FROM table WHERE <each of equal> AND in_column IN (values), as plain tuples.

    A hot-path lookup (identity resolution, suppressions) without building and compiling a
    SQLAlchemy statement per call: the statement is compiled once per shape. SQLite gets an IN list
    padded up to one of a few lengths (by repeating a value, which matches nothing new);
    PostgreSQL one array parameter (`= ANY(...)`: a short statement psycopg parses once, however
    many values). For columns whose values need no result processing (strings, integers);
    `values` must fit the largest IN size."""
    if not values:
        return []
    size = next((n for n in _IN_SIZES if n >= len(values)), None)
    if size is None:
        raise ValueError(f"select_in takes at most {_IN_SIZES[-1]} values, not {len(values)}")
    array = conn.dialect.name == "postgresql"
    names = tuple(equal)
    key = (table.name, conn.dialect.name, tuple(columns), names, in_column, 0 if array else size)
    hit = _lookups.get(key)
    if hit is None:
        column = table.c[in_column]
        membership = (column == any_(bindparam("in_values", type_=postgresql.ARRAY(column.type))) if array
                      else column.in_([bindparam(f"in_{i}") for i in range(size)]))
        statement = select(*(table.c[c] for c in columns)).where(
            *(table.c[n] == bindparam(f"eq_{n}") for n in names), membership)
        compiled = statement.compile(dialect=conn.dialect)
        order = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
        sql = str(compiled)
        if array:  # send the values as a binary array: psycopg's text form quotes every element by regex
            sql = sql.replace("%(in_values)s", "%(in_values)b")
        hit = _lookups[key] = (sql, order, bool(compiled.positional))
    sql, order, positional = hit
    given: dict[str, Any] = {f"eq_{n}": v for n, v in equal.items()}
    if array:
        given["in_values"] = list(values)
    else:
        given.update((f"in_{i}", v) for i, v in enumerate(values))
        given.update((f"in_{i}", values[0]) for i in range(len(values), size))
    params: Any = tuple(given[name] for name in order) if positional else {name: given[name] for name in order}
    return [tuple(row) for row in conn.exec_driver_sql(sql, params)]
