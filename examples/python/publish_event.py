#!/usr/bin/env python3
"""Publish one tillsync event from Python: a minimal edge bridge in another language.

It builds an event envelope exactly as docs/protocol.md describes (a MessagePack map with
named fields, an adjacently tagged body), publishes it through JetStream on
`tillsync.ev.<tenant>.<store>.<device>` with the tillsync headers, waits for the PubAck and,
with --wait-watermark, for the broker's ack watermark to cover its seq. It prints the
event_id on stdout (and nothing else there), so scripts can capture it.

    python publish_event.py --nats-url nats://127.0.0.1:4222 \
        --tenant acme --store s1 --device till-1 --seq 1 --wait-watermark

With NATS authorization on (as tillsync runs it), --creds names the key to connect with: the
identity file `tillsync-edge activate` wrote for the device, an nkey seed file, or a .creds
file (default: $NATS_CREDS). Against a server that speaks only TLS (`tls://` URLs), --tls-ca,
--tls-cert and --tls-key name the CA to trust and the client certificate and key to present
(default: $NATS_CA_FILE, $NATS_CERT_FILE, $NATS_KEY_FILE). Replies come to the device's own
inbox prefix, `_INBOX_DEV.<tenant>.<store>.<device>`, the only one a device may subscribe to.

--dump prints the encoded envelope as hex instead of publishing (no server needed); with
fixed --event-id and --occurred-at-ms the output is deterministic, which the Rust test
tests/integration/example.rs uses to check this encoder against schemas::codec.

Exit codes: 0 published (and covered, with --wait-watermark), 1 NATS, credentials or timeout
failure, 2 invalid arguments (the same checks the broker makes, so the broker never quarantines
it).
"""

import argparse
import asyncio
import json
import os
import re
import secrets
import ssl
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


def server_said(errors) -> str:
    """The last error the connection reported, for the message of a failure it explains."""
    if not errors:
        return ""
    last = errors[-1]
    return f" (last error: {type(last).__name__}: {last})"


class CredentialsError(Exception):
    pass


def credentials(path: str) -> dict:
    """nats.connect options for the key in `path`: an identity file of `tillsync-edge activate`
    (JSON with the device's `seed`), a .creds file (a user JWT and its seed), or an nkey seed
    file (the seed alone, or the first line that is one, as tillsync reads them)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CredentialsError(f"cannot read --creds {path}: {e.strerror}") from e
    if "BEGIN NATS USER JWT" in text:
        return {"user_credentials": path}
    try:
        seed = json.loads(text).get("seed")
    except (ValueError, AttributeError):
        seed = next((line.strip() for line in text.splitlines() if re.fullmatch(r"S[A-Z2-7]{57}", line.strip())), None)
    if not seed:
        raise CredentialsError(f"--creds {path} holds no nkey seed (nor a tillsync-edge identity or a .creds file)")
    try:
        import nkeys  # noqa: F401  nats-py signs the server's nonce with it
    except ImportError as e:
        raise CredentialsError("an nkey seed needs the nkeys package: pip install 'nkeys>=0.2,<1'") from e
    return {"nkeys_seed_str": seed}


def tls_context(args):
    """The TLS settings for nats.connect: the CA to trust and the client certificate to show;
    None when none is given (a `tls://` URL then trusts the system's CAs)."""
    if not (args.tls_ca or args.tls_cert):
        return None
    try:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise CredentialsError(f"TLS files: {e}") from e
    return ctx


def connect_options(args, error_cb) -> dict:
    """Everything nats.connect needs besides the URL: credentials, TLS and the device's inbox."""
    options = {
        "connect_timeout": 5,
        "max_reconnect_attempts": 2,
        "error_cb": error_cb,
        # The device's private inbox (docs/protocol.md section 2.3): PubAcks and API answers
        # come back there, and a device may subscribe to no other.
        "inbox_prefix": f"_INBOX_DEV.{args.tenant}.{args.store}.{args.device}",
    }
    if args.creds:
        options.update(credentials(args.creds))
    ctx = tls_context(args)
    if ctx is not None:
        options["tls"] = ctx
    return options


async def publish(args, envelope: dict, data: bytes) -> int:
    errors = []

    async def remember(error) -> None:
        """nats-py prints a traceback per failed attempt by default; the last error is enough,
        and names what `NoServersError` hides (an authorization or TLS refusal)."""
        errors.append(error)

    try:
        options = connect_options(args, remember)
    except CredentialsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        nc = await nats.connect(args.nats_url, **options)
    except (nats.errors.Error, OSError) as e:
        print(f"error: cannot connect to {args.nats_url}: {type(e).__name__}: {e}{server_said(errors)}", file=sys.stderr)
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
        # A publish the server refused (a subject outside the device's permissions) only
        # times out; the refusal itself came to the error callback.
        print(f"error: {type(e).__name__}: {e}{server_said(errors)}", file=sys.stderr)
        return 1
    finally:
        await nc.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Publish one tillsync event through JetStream.")
    p.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--creds",
        default=os.environ.get("NATS_CREDS") or None,
        help="the key to connect with: a tillsync-edge identity file, an nkey seed file or a .creds file "
        "(default: $NATS_CREDS)",
    )
    p.add_argument("--tls-ca", default=os.environ.get("NATS_CA_FILE") or None, help="CA to trust (default: $NATS_CA_FILE)")
    p.add_argument(
        "--tls-cert", default=os.environ.get("NATS_CERT_FILE") or None, help="client certificate (default: $NATS_CERT_FILE)"
    )
    p.add_argument(
        "--tls-key", default=os.environ.get("NATS_KEY_FILE") or None, help="its private key (default: $NATS_KEY_FILE)"
    )
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
