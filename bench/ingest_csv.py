"""CSV contacts import throughput and memory, on SQLite, through the production code path
(services/imports.py: inspect_file, create, run — what `herald import contacts` runs).

measure(rows, workdir) writes a realistic contacts CSV of `rows` rows (a Shopify customers
export: ids, names with accents, unique emails, phones on ~45% of rows in mixed national and
international formats, country codes, tags, email/SMS consent columns, notes), then imports it
into a fresh SQLite database in a child process, so the peak RSS reported is the import's own
(getrusage ru_maxrss of the child). `rss_start_mb` is the child's RSS just before the import
starts (interpreter, libraries, migrated database open); `peak_rss_mb - rss_start_mb` is what
the import itself needed, which must not grow with the file.

seconds covers the whole import: the file inspection pass (hash, encoding, header) and the run.
A large file's rows are parsed in a second process (services/imports.py, "reader process"): its
CPU time and peak RSS are reported apart (reader_cpu_seconds, reader_peak_rss_mb). cpu_seconds
and rows_per_cpu_s are the importing process's own, a steadier figure than wall time on a shared
machine.

    .venv/bin/python bench/ingest_csv.py                  # 1,000,000 rows
    .venv/bin/python bench/ingest_csv.py --rows 100000 --keep /tmp/csvbench
    .venv/bin/python bench/ingest_csv.py --sqlite-synchronous NORMAL
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

HEADER = ["Customer ID", "First Name", "Last Name", "Email", "Accepts Email Marketing", "Default Address Company",
          "Default Address Address1", "Default Address City", "Default Address Province Code",
          "Default Address Country Code", "Default Address Zip", "Phone", "Accepts SMS Marketing", "Total Spent",
          "Total Orders", "Note", "Tags"]
FIRST = ["Ana", "João", "Zoë", "François", "Müller", "Søren", "Łukasz", "Chloé", "Mateo", "Olivia", "Liam", "Yuki",
         "Aarav", "Fatima", "Noah", "Emma", "Lucía", "Björn", "Ines", "Wei"]
LAST = ["Souza", "García", "Nguyễn", "O'Brien", "Smith", "Schäfer", "Dubois", "Kowalski", "Rossi", "Tanaka", "Kim",
        "Johnson", "Pérez", "Öztürk", "Silva", "Brown", "Jensen", "Novák", "Haddad", "Lee"]
DOMAINS = ["example.com", "mail.example.org", "shop.example.net", "example.co.uk", "example.com.br"]
CITIES = [("US", "CA", "San Francisco", "94103"), ("US", "NY", "New York", "10001"), ("GB", "", "London", "SW1A 1AA"),
          ("DE", "", "Berlin", "10115"), ("FR", "", "Paris", "75001"), ("BR", "SP", "São Paulo", "01000-000"),
          ("CA", "ON", "Toronto", "M5H 2N2"), ("AU", "NSW", "Sydney", "2000")]
AREAS = ["212", "415", "312", "617", "206", "305", "512", "702", "303", "404", "213", "646"]
TAGS = ["vip", "wholesale", "newsletter", "returning", "b2b", "gift", "eu", "promo-2024"]
NOTES = ["", "", "", "prefers email", "called about order, asked for \"express\" shipping", "line one\nline two"]


def phone_for(i: int, rnd: random.Random) -> str:
    """Unique valid numbers: US ones in national or E.164 form, UK and German ones in E.164."""
    style = i % 5
    line = f"{i % 10000:04d}"
    exchange = 200 + (i // 10000) % 700
    if exchange in (211, 311, 411, 511, 555, 611, 711, 811, 911):
        exchange += 1
    area = AREAS[(i // 7_000_000) % len(AREAS)]
    if style == 3:
        return f"+44 20 7{(i // 10000) % 1000:03d} {line}"
    if style == 4:
        return f"+49 30 {(i // 10000) % 1000 + 1000:04d}{line}"
    return (f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"+1 {area} {exchange} {line}")[style]


def ascii_fold(name: str) -> str:
    """How people's names end up in their (ASCII) addresses: 'Łukasz Öztürk' -> 'ukasz', 'ozturk'."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower().replace("'", "")


def write_csv(path: Path, rows: int, seed: int = 7) -> int:
    rnd = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for i in range(rows):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            country, province, city, zip_code = rnd.choice(CITIES)
            has_phone = rnd.random() < 0.45
            tags = ", ".join(rnd.sample(TAGS, rnd.randint(0, 3)))
            w.writerow([f"'{7_000_000_000 + i}", first, last,
                        f"{ascii_fold(first)[:3]}.{ascii_fold(last)[:4]}{i}@{DOMAINS[i % len(DOMAINS)]}",
                        rnd.choice(("yes", "no", "yes", "")), rnd.choice(("", "", "Acme Ltd")),
                        f"{rnd.randint(1, 9999)} Main St", city, province, country, zip_code,
                        phone_for(i, rnd) if has_phone else "", rnd.choice(("yes", "no", "", "")) if has_phone else "",
                        f"{rnd.randint(0, 200000) / 100:.2f}", str(rnd.randint(0, 40)), rnd.choice(NOTES), tags])
    return path.stat().st_size


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(csv_path: Path, db_path: Path, synchronous: str) -> dict[str, Any]:
    """Runs in the child process: a fresh database, one store, the import."""
    from datetime import UTC, datetime

    from herald.db.engine import make_engine
    from herald.db.migrate import upgrade
    from herald.domain.auth import Principal
    from herald.domain.clock import SystemClock
    from herald.services import imports, workspaces

    engine = make_engine(f"sqlite:///{db_path}", sqlite_synchronous=synchronous)
    upgrade(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        ws = workspaces.create_workspace(conn, name="Bench", slug="bench", now=now)
        who = Principal("bench", ws["id"], None)
        store = workspaces.create_store(conn, who, name="Shop", platform="shopify", currency="USD", timezone="UTC",
                                        domain=None, now=now)
    start_rss = rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    facts = imports.inspect_file(csv_path)
    with engine.begin() as conn:
        row = imports.create(conn, who, kind="contacts", store_id=store["id"], path=csv_path, source_name=csv_path.name,
                             facts=facts, mapping=None, default_country="US", now=now)
    inspected = time.perf_counter()
    done = imports.run(engine, row["id"], SystemClock())
    finished, cpu_finished = time.perf_counter(), time.process_time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    reader = resource.getrusage(resource.RUSAGE_CHILDREN)  # the import's reader process, if it used one
    engine.dispose()
    total = done["rows_ok"] + done["rows_unchanged"] + done["rows_failed"]
    return {"rows": total, "seconds": round(finished - started, 3), "inspect_seconds": round(inspected - started, 3),
            "rows_per_s": round(total / (finished - started), 1), "cpu_seconds": round(cpu_finished - cpu_started, 3),
            "rows_per_cpu_s": round(total / (cpu_finished - cpu_started), 1), "peak_rss_mb": round(peak, 1),
            "reader_cpu_seconds": round(reader.ru_utime + reader.ru_stime, 3),
            "reader_peak_rss_mb": round(reader.ru_maxrss / 1024, 1),
            "rss_start_mb": round(start_rss, 1), "rows_ok": done["rows_ok"], "rows_failed": done["rows_failed"],
            "state": done["state"], "sqlite_synchronous": synchronous}


def measure(rows: int, workdir: Path, *, synchronous: str = "FULL") -> dict[str, Any]:
    """Generate `rows` contacts into workdir/contacts-<rows>.csv (reused if present) and import them
    into a fresh SQLite database in a child process. Keys: rows, seconds, rows_per_s, peak_rss_mb,
    rss_start_mb (and a few more)."""
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = workdir / f"contacts-{rows}.csv"
    if not csv_path.exists():
        tmp = csv_path.with_suffix(".tmp")
        write_csv(tmp, rows)
        tmp.rename(csv_path)
    db_path = workdir / f"import-{rows}-{os.getpid()}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    # -P: bench/ is not put on sys.path, so bench scripts (bench/email.py) cannot shadow stdlib modules.
    proc = subprocess.run([sys.executable, "-P", str(Path(__file__).resolve()), "--child", str(csv_path), str(db_path),
                           synchronous], capture_output=True, text=True, env=env, check=False, cwd=REPO)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"import child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    result["file_mb"] = round(csv_path.stat().st_size / 1e6, 1)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (the CSV is reused)")
    parser.add_argument("--sqlite-synchronous", choices=("FULL", "NORMAL"), default="FULL",
                        help="as HERALD_SQLITE_SYNCHRONOUS (the default, FULL, is what herald uses)")
    args = parser.parse_args()
    if args.keep:
        result = measure(args.rows, args.keep, synchronous=args.sqlite_synchronous)
    else:
        with tempfile.TemporaryDirectory(prefix="herald-csv-") as tmp:
            result = measure(args.rows, Path(tmp), synchronous=args.sqlite_synchronous)
    print(json.dumps(result))
    print(f"{result['rows']:,} rows in {result['seconds']:.1f}s ({result['inspect_seconds']:.1f}s inspecting): "
          f"{result['rows_per_s']:,.0f} rows/s ({result['rows_per_cpu_s']:,.0f} per CPU second of the importing "
          f"process, {result['reader_cpu_seconds']:.1f}s CPU in its reader process); "
          f"RSS {result['rss_start_mb']:.0f} MB at start, "
          f"peak {result['peak_rss_mb']:.0f} MB, reader peak {result['reader_peak_rss_mb']:.0f} MB "
          f"({result['file_mb']} MB file)", file=sys.stderr)


if __name__ == "__main__":
    main()
