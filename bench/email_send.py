"""Email send speed: render + track + MIME + DKIM (RSA-2048) + SMTP, messages per second.

Each message is a different recipient of a realistic MJML order confirmation (a loop over three
order lines, ~15 KB of HTML after css-inline): Liquid render from the template compiled once,
tracked links and the open pixel, List-Unsubscribe headers, `build_mime`, a DKIM-Signature with a
2048-bit RSA key, and an SMTP transaction on a pooled connection (herald's SmtpProvider) to
postfix's `smtp-sink`, which accepts and discards. 1 and 2 processes, each sending its share.
As in production (channels/registry.py), the provider signs in a thread pool of os.cpu_count()
threads: `cryptography` releases the GIL during the RSA operation, so one process signs on every
core. `--uvloop` runs the event loop on uvloop when it is installed (not a Herald dependency).

Then one process sends 500 messages with no other work running and the CPU time of each stage
is printed per message (thread CPU time, so other processes on the machine do not count):
render (Liquid: subject, HTML, text), track (click links, open pixel, List-Unsubscribe headers),
mime (build_mime), dkim-sign (DkimSigner.sign, RSA included), smtp (SmtpProvider.send of the
unsigned message, 64 in flight, minus the mime time it includes).

Reference, same machine, same run, same sink: postfix's own `smtp-source` sending messages of the
same size with 32 parallel sessions — raw SMTP with no rendering or signing at all.
ratio = herald ÷ smtp-source.

The machines are shared and noisy: each figure is the median of --runs runs (min and max
shown), the reference and herald runs interleaved.

    .venv/bin/python bench/email_send.py                 # 20,000 messages per run, 3 runs
    .venv/bin/python bench/email_send.py --quick         # 3,000 messages, 1 run
    .venv/bin/python bench/email_send.py --stages-only   # the per-stage breakdown alone
"""


from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from herald.channels.email.dkim import DkimSigner, generate_key
from herald.channels.email.mime import build_mime
from herald.channels.email.smtp import SmtpProvider, SmtpRelay
from herald.domain.delivery import DkimKey, EmailContent, OutboundMessage
from herald.pipeline import render, tracking
from herald.services.email import list_unsubscribe_headers

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
DOMAIN = "shop.example"
STAGE_MESSAGES = 500

TEMPLATE = """<mjml>
  <mj-head><mj-attributes><mj-all font-family="Helvetica, Arial, sans-serif" /></mj-attributes>
    <mj-style inline="inline">.price { color: #0a7d32; font-weight: bold; } .muted { color: #777; }</mj-style>
  </mj-head>
  <mj-body background-color="#f4f4f4">
    <mj-section background-color="#ffffff"><mj-column>
      <mj-image width="120px" src="https://shop.example/logo.png" alt="{{ store.name }}" href="{{ store.url }}" />
      <mj-text font-size="20px">Thank you for your order, {{ contact.first_name | default: "friend" }}!</mj-text>
      <mj-text>We received order <b>{{ order.name }}</b> and are getting it ready. You will get another
        email when it ships. Questions? Reply to this email or visit <a href="{{ store.url }}/help">our help
        centre</a>.</mj-text>
    </mj-column></mj-section>
    <mj-section background-color="#ffffff"><mj-column>
      <mj-table>
        <tr style="border-bottom:1px solid #ecedee;text-align:left;"><th>Item</th><th>Qty</th><th>Price</th></tr>
        {% for line in order.lines %}
        <tr><td><a href="{{ store.url }}/products/{{ line.sku }}">{{ line.title }}</a></td>
            <td>{{ line.quantity }}</td><td class="price">{{ line.price }}</td></tr>
        {% endfor %}
        <tr><td colspan="2"><b>Total</b></td><td class="price">{{ order.total }}</td></tr>
      </mj-table>
      <mj-button background-color="#0a7d32" href="{{ order.status_url }}">View your order</mj-button>
    </mj-column></mj-section>
    <mj-section><mj-column>
      <mj-text css-class="muted" font-size="12px">{{ store.name }} · {{ store.address }}<br/>
        You receive this email because you ordered from {{ store.name }}.
        <a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text>
    </mj-column></mj-section>
  </mj-body>
</mjml>"""


def variables(i: int) -> dict[str, object]:
    return {
        "contact": {"first_name": f"Ana{i}", "last_name": "Souza", "email": f"buyer{i}@example.net"},
        "store": {"name": "Aurora Outfitters", "url": "https://shop.example",
                  "address": "Rua Augusta 1500, 01304-001 São Paulo, Brazil"},
        "order": {"name": f"#{1000 + i}", "total": "129.70 USD", "status_url": f"https://shop.example/orders/{i}",
                  "lines": [{"title": "Merino wool beanie", "quantity": 1, "price": "29.90 USD", "sku": "MB-1"},
                            {"title": "Trail running socks (3 pairs)", "quantity": 2, "price": "19.90 USD",
                             "sku": "TS-3"},
                            {"title": "Waterproof shell jacket", "quantity": 1, "price": "60.00 USD", "sku": "WJ-9"}]},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_sink() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def reference(port: int, messages: int, size: int) -> float:
    """smtp-source: `messages` messages of `size` bytes over 32 sessions; messages per second."""
    started = time.perf_counter()
    subprocess.run([SMTP_SOURCE, "-s", "32", "-m", str(messages), "-l", str(size), "-f", f"shop@{DOMAIN}",
                    "-t", "buyer@example.net", f"127.0.0.1:{port}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return messages / (time.perf_counter() - started)


def one_message(compiled: render.CompiledEmail, links: tracking.TrackingLinks, key: DkimKey | None,
                i: int) -> OutboundMessage:
    message_id = f"msg_bench{i:012d}"
    unsubscribe = links.unsubscribe_url(message_id)
    rendered = render.render_email(compiled, {**variables(i), "unsubscribe_url": unsubscribe})
    return tracked_message(rendered, links, key, i, message_id, unsubscribe)


def tracked_message(rendered: render.RenderedEmail, links: tracking.TrackingLinks, key: DkimKey | None, i: int,
                    message_id: str, unsubscribe: str) -> OutboundMessage:
    html = links.rewrite(rendered.html or "", message_id)
    html = tracking.add_open_pixel(html, links.open_url(message_id))
    headers = tuple(list_unsubscribe_headers(unsubscribe, unsubscribe.rsplit("/", 1)[1], DOMAIN))
    return OutboundMessage(
        id=message_id, workspace_id="ws_bench", channel="email", purpose="marketing", to=f"buyer{i}@example.net",
        email=EmailContent(from_address=f"orders@{DOMAIN}", from_name="Aurora Outfitters", subject=rendered.subject,
                           html=html, text=rendered.text, headers=headers),
        sending_domain=DOMAIN, metadata={"return_path": f"bounce+{message_id}@{DOMAIN}"}, dkim=key)


def compile_template() -> render.CompiledEmail:
    return render.compile_email(render.EmailTemplateSource(
        subject="Order {{ order.name }} confirmed", body=TEMPLATE, body_format="mjml"))


def run_loop(main: Callable[[], object], use_uvloop: bool) -> object:
    """asyncio.run, on uvloop when asked and installed."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main())  # type: ignore[arg-type]
    return asyncio.run(main())  # type: ignore[arg-type]


def sender(args: tuple[int, int, int, int, bytes, bool]) -> tuple[int, float, float, int]:
    """One process: send `count` messages; (sent, seconds, cpu seconds, failures)."""
    port, start, count, concurrency, pem, use_uvloop = args
    result = run_loop(lambda: _send_all(port, start, count, concurrency, pem), use_uvloop)
    return result  # type: ignore[return-value]


async def _send_all(port: int, start: int, count: int, concurrency: int, pem: bytes) -> tuple[int, float, float, int]:
    compiled = compile_template()
    links = tracking.TrackingLinks("https://t.shop.example", b"k" * 32)
    key = DkimKey(DOMAIN, "bench", pem)
    # What channels/registry.py builds: the message carries its key, RSA runs in a thread pool.
    signing = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="dkim")
    provider = SmtpProvider(SmtpRelay("127.0.0.1", port, security="none", pool_size=min(concurrency, 16)),
                            sign_executor=signing)
    failures = 0
    queue = iter(range(start, start + count))

    async def worker() -> None:
        nonlocal failures
        for i in queue:
            result = await provider.send(one_message(compiled, links, key, i))
            failures += result.status != "accepted"

    warm = [asyncio.create_task(provider.send(one_message(compiled, links, key, i))) for i in range(8)]
    await asyncio.gather(*warm)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await provider.aclose()
    signing.shutdown()
    return count, seconds, cpu, failures


# -- per-stage CPU ----------------------------------------------------------------------------------

STAGES = ("render", "track", "mime", "dkim-sign", "smtp")


def stage_breakdown(port: int, pem: bytes, use_uvloop: bool) -> dict[str, float]:
    """CPU µs per message of each stage, measured in this process over STAGE_MESSAGES messages."""
    compiled = compile_template()
    links = tracking.TrackingLinks("https://t.shop.example", b"k" * 32)
    signer = DkimSigner(DOMAIN, "bench", pem)
    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.thread_time
    unsigned: list[OutboundMessage] = []
    for i in range(STAGE_MESSAGES):
        message_id = f"msg_bench{i:012d}"
        t0 = clock()
        unsubscribe = links.unsubscribe_url(message_id)
        rendered = render.render_email(compiled, {**variables(i), "unsubscribe_url": unsubscribe})
        t1 = clock()
        message = tracked_message(rendered, links, None, i, message_id, unsubscribe)
        t2 = clock()
        data = build_mime(message, date=datetime.now(UTC))
        t3 = clock()
        signer.sign(data)
        t4 = clock()
        spent["render"] += t1 - t0
        spent["track"] += t2 - t1
        spent["mime"] += t3 - t2
        spent["dkim-sign"] += t4 - t3
        unsigned.append(message)
    smtp_cpu = run_loop(lambda: _send_unsigned(port, unsigned), use_uvloop)
    spent["smtp"] = float(smtp_cpu) - spent["mime"]  # type: ignore[arg-type]   # send() builds the MIME again
    return {stage: seconds / STAGE_MESSAGES * 1e6 for stage, seconds in spent.items()}


async def _send_unsigned(port: int, messages: list[OutboundMessage]) -> float:
    """Process CPU seconds to send `messages` unsigned, 64 in flight, on a warm connection pool."""
    provider = SmtpProvider(SmtpRelay("127.0.0.1", port, security="none", pool_size=16))
    await asyncio.gather(*(provider.send(message) for message in messages[:16]))
    queue = iter(messages)

    async def worker() -> None:
        for message in queue:
            await provider.send(message)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(64)))
    cpu = time.process_time() - cpu0
    await provider.aclose()
    return cpu


def run_herald(port: int, messages: int, processes: int, concurrency: int, pem: bytes,
               use_uvloop: bool) -> tuple[float, float, int]:
    """messages/s over all processes (wall clock of the slowest), CPU µs per message, failures."""
    share = messages // processes
    jobs = [(port, p * share, share, concurrency, pem, use_uvloop) for p in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.map(sender, jobs)
    sent = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    cpu = sum(r[2] for r in results)
    return sent / wall, cpu / sent * 1e6, sum(r[3] for r in results)


def message_size(pem: bytes) -> int:
    compiled = compile_template()
    message = one_message(compiled, tracking.TrackingLinks("https://t.shop.example", b"k" * 32),
                          DkimKey(DOMAIN, "bench", pem), 1)
    return len(DkimSigner(DOMAIN, "bench", pem).sign(build_mime(message, date=datetime.now(UTC))))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (default 20,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="messages in flight per process")
    parser.add_argument("--quick", action="store_true", help="3,000 messages, 1 run")
    parser.add_argument("--uvloop", action="store_true", help="run the event loops on uvloop (when installed)")
    parser.add_argument("--stages-only", action="store_true", help="only the per-stage CPU breakdown")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.runs = 3_000, 1
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: install postfix (apt-get install postfix) for smtp-sink and smtp-source")
    pem, _txt = generate_key("rsa-2048")
    size = message_size(pem)
    figures: dict[str, list[float]] = {"smtp-source": [], "herald 1 process": [], "herald 2 processes": []}
    cpu: dict[str, list[float]] = {"herald 1 process": [], "herald 2 processes": []}
    failures = 0
    with smtp_sink() as port:
        stages = stage_breakdown(port, pem, args.uvloop)
        for _run in range(0 if args.stages_only else args.runs):
            figures["smtp-source"].append(reference(port, args.messages, size))
            for processes in (1, 2):
                name = f"herald {processes} process{'es' if processes > 1 else ''}"
                rate, us, failed = run_herald(port, args.messages, processes, args.concurrency, pem, args.uvloop)
                figures[name].append(rate)
                cpu[name].append(us)
                failures += failed
    if args.stages_only:
        print_stages(stages, args.json)
        return
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ref = statistics.median(figures["smtp-source"])
    report = {name: {"median": statistics.median(v), "min": min(v), "max": max(v),
                     "ratio": statistics.median(v) / ref} for name, v in figures.items()}
    if args.json:
        print(json.dumps({"messages": args.messages, "runs": args.runs, "message_bytes": size, "cpus": os.cpu_count(),
                          "figures": report, "cpu_us_per_message": {k: statistics.median(v) for k, v in cpu.items()},
                          "failures": failures, "peak_child_rss_mb": peak_rss_mb, "uvloop": args.uvloop,
                          "stage_cpu_us_per_message": stages}, indent=2))
        return
    print(f"email send: {args.messages:,} messages per run, {args.runs} run(s), {size:,}-byte messages, "
          f"{os.cpu_count()} CPUs, DKIM RSA-2048 in {os.cpu_count()} signing threads, SMTP to smtp-sink"
          f"{', uvloop' if args.uvloop else ''}")
    for name, values in figures.items():
        extra = f"  CPU {statistics.median(cpu[name]):,.0f} µs/msg" if name in cpu else ""
        print(f"  {name:<20} {spread(values)} msg/s   ratio {report[name]['ratio']:.2f}{extra}")
    print(f"  failures: {failures}   peak RSS of a sending process: {peak_rss_mb:,.0f} MB")
    print("  goal: >= 2,500 msg/s")
    print_stages(stages, False)


def print_stages(stages: dict[str, float], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"stage_cpu_us_per_message": stages}, indent=2))
        return
    listed = "  ".join(f"{stage} {us:,.0f}" for stage, us in stages.items())
    print(f"  CPU µs per message by stage (1 process, {STAGE_MESSAGES} messages): {listed}"
          f"  = {sum(stages.values()):,.0f}")


if __name__ == "__main__":
    main()
