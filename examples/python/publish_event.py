#!/usr/bin/env python3
"""Publish one tillsync event from Python: a minimal edge bridge in another language.

It builds an event envelope exactly as docs/protocol.md describes (a MessagePack map with
named fields, an adjacently tagged body), publishes it through JetStream on
`tillsync.ev.<tenant>.<store>.<device>` with the tillsync headers, waits for the PubAck and,
with --wait-watermark, for the broker's ack watermark to cover its seq. It prints the
event_id on stdout (and nothing else there), so scripts can capture it.

    python publish_event.py --nats-url nats://127.0.0.1:4222 \
        --tenant acme --store s1 --device till-1 --seq 1 --wait-watermark

--dump prints the encoded envelope as hex instead of publishing (no server needed); with
fixed --event-id and --occurred-at-ms the output is deterministic, which the Rust test
tests/integration/example.rs uses to check this encoder against schemas::codec.

Exit codes: 0 published (and covered, with --wait-watermark), 1 NATS or timeout failure,
2 invalid arguments (the same checks the broker makes, so the broker never quarantines it).
"""

import argparse
import asyncio
import os
import re
import secrets
import sys
import time

import msgpack
import nats
import nats.errors
import nats.js.errors

SCHEMA_VERSION = 1
CONTENT_TYPE = "application/vnd.tillsync+msgpack"
EVENTS_STREAM = "TILLSYNC_EVENTS"
WATERMARKS_STREAM = "TILLSYNC_WATERMARKS"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_AMOUNT_MINOR = 10_000_000_000
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")


def uuid7(now_ms: int) -> str:
    """A UUIDv7: 48 bits of Unix ms, then random bits, so ids sort by creation time."""
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (now_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def subject(family: str, tenant: str, store: str, device: str) -> str:
    return f"tillsync.{family}.{tenant}.{store}.{device}"


def build_body(args) -> dict:
    """The adjacently tagged body. Field order follows the Rust structs, so the bytes match
    schemas::codec::encode exactly (the broker does not need that, but the test checks it)."""
    if args.kind == "order_opened":
        payload = {"order_id": args.order_id, "currency": args.currency, "table": args.table}
    else:
        payload = {
            "order_id": args.order_id,
            "line_id": args.line_id,
            "sku": args.sku,
            "name": args.name,
            "quantity": args.quantity,
            "unit_price_minor": args.unit_price_minor,
        }
    return {"kind": args.kind, "payload": payload}


def build_envelope(args) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tenant_id": args.tenant,
        "store_id": args.store,
        "device_id": args.device,
        "event_id": args.event_id,
        "seq": args.seq,
        "occurred_at_ms": args.occurred_at_ms,
        "body": build_body(args),
    }


def validate(args) -> None:
    """The broker's checks, done before publishing so a mistake fails here with a message."""
    problems = []
    ids = [("tenant", args.tenant), ("store", args.store), ("device", args.device), ("order-id", args.order_id)]
    if args.kind == "order_item_added":
        ids += [("line-id", args.line_id), ("sku", args.sku)]
    for name, value in ids:
        if not ID_RE.match(value):
            problems.append(f"--{name} {value!r} must match [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}")
    if not (UUID_RE.match(args.event_id) or ULID_RE.match(args.event_id)):
        problems.append(f"--event-id {args.event_id!r} must be a hyphenated UUID (v7 preferred) or a ULID")
    if args.seq < 1:
        problems.append("--seq starts at 1")
    if args.occurred_at_ms <= 0:
        problems.append("--occurred-at-ms must be positive")
    if not re.fullmatch(r"[A-Z]{3}", args.currency):
        problems.append(f"--currency {args.currency!r} must be 3 upper-case letters")
    if args.table is not None and len(args.table.encode()) > 512:
        problems.append("--table is longer than 512 bytes")
    if args.kind == "order_item_added":
        if not args.name.strip() or len(args.name.encode()) > 512:
            problems.append("--name must be 1..=512 bytes and not blank")
        if not 1 <= args.quantity <= 10_000:
            problems.append("--quantity must be in 1..=10000")
        if not 1 <= args.unit_price_minor <= MAX_AMOUNT_MINOR:
            problems.append(f"--unit-price-minor must be in 1..={MAX_AMOUNT_MINOR}")
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        sys.exit(2)


def decode_watermark(data: bytes) -> int:
    return int(msgpack.unpackb(data, raw=False)["seq"])


async def wait_watermark(js, wm_subject: str, seq: int, timeout: float, sub) -> int:
    """Waits until the device's watermark is at least `seq`. The live subscription (opened
    before publishing) catches new watermarks; the direct get covers one published earlier,
    e.g. when this event was a duplicate and the watermark did not move."""
    deadline = time.monotonic() + timeout
    try:
        last = await js.get_last_msg(WATERMARKS_STREAM, wm_subject, direct=True)
        if last.data and decode_watermark(last.data) >= seq:
            return decode_watermark(last.data)
    except nats.js.errors.NotFoundError:
        pass
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no watermark >= {seq} on {wm_subject} within {timeout} s")
        try:
            msg = await sub.next_msg(timeout=left)
        except nats.errors.TimeoutError:
            continue
        wm = decode_watermark(msg.data)
        if wm >= seq:
            return wm


async def quiet(_error) -> None:
    """nats-py prints a traceback per failed attempt by default; the final error is enough."""


async def publish(args, envelope: dict, data: bytes) -> int:
    try:
        nc = await nats.connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=2, error_cb=quiet)
    except (nats.errors.Error, OSError) as e:
        print(f"error: cannot connect to {args.nats_url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        js = nc.jetstream(timeout=args.timeout)
        ev_subject = subject("ev", args.tenant, args.store, args.device)
        wm_subject = subject("wm", args.tenant, args.store, args.device)
        sub = await nc.subscribe(wm_subject) if args.wait_watermark else None
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Tillsync-Schema-Version": str(SCHEMA_VERSION),
            # JetStream drops a re-publish with the same id inside the duplicate window.
            # The id starts with the device's address and a nonce only it knows (docs/protocol.md
            # section 5), so no other client can publish that id first.
            "Nats-Msg-Id": f"{args.tenant}.{args.store}.{args.device}.{args.msg_id_nonce}:{envelope['event_id']}",
        }
        ack = await js.publish(ev_subject, data, stream=EVENTS_STREAM, headers=headers)
        note = " (duplicate: already stored)" if ack.duplicate else ""
        print(f"published {ev_subject} seq={args.seq} stream_seq={ack.seq}{note}", file=sys.stderr)
        if sub is not None:
            wm = await wait_watermark(js, wm_subject, args.seq, args.timeout, sub)
            print(f"watermark {wm} covers seq {args.seq}", file=sys.stderr)
        return 0
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        await nc.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Publish one tillsync event through JetStream.")
    p.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--tenant", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--seq", type=int, required=True, help="device-local seq: 1, 2, 3, ... without gaps")
    p.add_argument("--kind", choices=["order_opened", "order_item_added"], default="order_opened")
    p.add_argument("--event-id", help="UUIDv7 or ULID; default: a new UUIDv7 (reuse it to retry)")
    p.add_argument(
        "--msg-id-nonce",
        default=os.environ.get("TILLSYNC_MSG_ID_NONCE") or secrets.token_hex(16),
        help="the secret part of the Nats-Msg-Id; a real bridge draws one and keeps it; pass the same one to retry "
        "(default: $TILLSYNC_MSG_ID_NONCE, else a new random one)",
    )
    p.add_argument("--occurred-at-ms", type=int, help="Unix ms; default: now")
    p.add_argument("--order-id", help="default: derived from the event id")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--table", help="order_opened: table label (optional)")
    p.add_argument("--line-id", default="l-1")
    p.add_argument("--sku", default="latte")
    p.add_argument("--name", default="Latte")
    p.add_argument("--quantity", type=int, default=1)
    p.add_argument("--unit-price-minor", type=int, default=350)
    p.add_argument("--wait-watermark", action="store_true", help="also wait until the broker committed it")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for the PubAck and the watermark")
    p.add_argument("--dump", action="store_true", help="print the encoded envelope as hex; do not publish")
    args = p.parse_args(argv)
    now_ms = time.time_ns() // 1_000_000
    if args.event_id is None:
        args.event_id = uuid7(now_ms)
    if args.occurred_at_ms is None:
        args.occurred_at_ms = now_ms
    if args.order_id is None:
        args.order_id = f"o-{args.event_id}"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    validate(args)
    envelope = build_envelope(args)
    data = msgpack.packb(envelope, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        print(f"error: encoded event is {len(data)} bytes, more than {MAX_MESSAGE_BYTES}", file=sys.stderr)
        return 2
    if args.dump:
        print(data.hex())
        return 0
    code = asyncio.run(publish(args, envelope, data))
    if code == 0:
        print(envelope["event_id"])
    return code


if __name__ == "__main__":
    sys.exit(main())
