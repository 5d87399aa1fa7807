-- tillsync cloud schema. Every row carries tenant_id and store_id; every query filters by tenant.
-- Tables are unqualified so the same migrations build a shadow schema for `tillsync replay`.

CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    tenant_id            text NOT NULL REFERENCES tenants (tenant_id),
    store_id             text NOT NULL,
    device_id            text NOT NULL,
    provisioned          boolean NOT NULL DEFAULT false,
    first_seen           timestamptz,
    last_seen            timestamptz,
    last_seq             bigint NOT NULL DEFAULT 0,   -- highest seq committed
    watermark            bigint NOT NULL DEFAULT 0,   -- highest contiguous seq committed
    gaps                 bigint NOT NULL DEFAULT 0,   -- gaps detected so far
    software_version     text,
    outbox_depth         bigint,
    oldest_unsent_age_s  bigint,
    last_acked_seq       bigint,
    config_revision      bigint,
    uptime_s             bigint,
    last_heartbeat       timestamptz,
    online               boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, store_id, device_id)
);

-- A missing seq range seen on a device; filled_at is set when every seq in it arrived.
CREATE TABLE device_gaps (
    tenant_id    text NOT NULL,
    store_id     text NOT NULL,
    device_id    text NOT NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    filled_at    timestamptz,
    PRIMARY KEY (tenant_id, store_id, device_id, from_seq)
);

-- The dedupe authority: one row per (device, event) forever, written in the same transaction
-- as the read-model change.
CREATE TABLE processed_events (
    tenant_id     text NOT NULL,
    store_id      text NOT NULL,
    device_id     text NOT NULL,
    event_id      text NOT NULL,
    seq           bigint NOT NULL,
    kind          text NOT NULL,
    content_hash  bytea NOT NULL,
    outcome       text NOT NULL,           -- applied | stale
    stream_seq    bigint,
    occurred_at   timestamptz NOT NULL,
    committed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, store_id, device_id, event_id)
);
CREATE INDEX processed_events_seq ON processed_events (tenant_id, store_id, device_id, seq);

CREATE TABLE conflicts (
    id             bigserial PRIMARY KEY,
    tenant_id      text NOT NULL,
    store_id       text NOT NULL,
    device_id      text NOT NULL,
    event_id       text NOT NULL,
    seq            bigint NOT NULL,
    kind           text NOT NULL,          -- content_mismatch | stale
    existing_hash  bytea,
    incoming_hash  bytea NOT NULL,
    detail         text NOT NULL DEFAULT '',
    stream_seq     bigint,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conflicts_device ON conflicts (tenant_id, store_id, device_id);

CREATE TABLE quarantine (
    id             bigserial PRIMARY KEY,
    tenant_id      text,                   -- as far as it could be read; NULL when unknown
    store_id       text,
    device_id      text,
    stream         text NOT NULL,
    stream_seq     bigint NOT NULL,
    subject        text NOT NULL,
    reason         text NOT NULL,
    detail         text NOT NULL,
    payload        bytea NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    redriven_at    timestamptz,
    redrive_count  integer NOT NULL DEFAULT 0,
    UNIQUE (stream, stream_seq)
);
CREATE INDEX quarantine_reason ON quarantine (reason);

CREATE TABLE quarantine_redrives (
    id             bigserial PRIMARY KEY,
    quarantine_id  bigint NOT NULL REFERENCES quarantine (id),
    operator       text NOT NULL,
    note           text NOT NULL DEFAULT '',
    new_stream_seq bigint,
    at             timestamptz NOT NULL DEFAULT now()
);

-- Read models -------------------------------------------------------------------------------

CREATE TABLE orders (
    tenant_id       text NOT NULL,
    store_id        text NOT NULL,
    order_id        text NOT NULL,
    device_id       text NOT NULL,
    currency        text NOT NULL,
    table_label     text,
    status          text NOT NULL DEFAULT 'open',
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    last_seq        bigint NOT NULL,
    PRIMARY KEY (tenant_id, store_id, order_id)
);

CREATE TABLE order_items (
    tenant_id         text NOT NULL,
    store_id          text NOT NULL,
    order_id          text NOT NULL,
    line_id           text NOT NULL,
    device_id         text NOT NULL,
    sku               text NOT NULL,
    name              text NOT NULL,
    quantity          integer NOT NULL,
    unit_price_minor  bigint NOT NULL,
    removed           boolean NOT NULL DEFAULT false,
    last_seq          bigint NOT NULL,
    PRIMARY KEY (tenant_id, store_id, order_id, line_id)
);

-- Captures and refunds. refund_id is '' for a capture.
CREATE TABLE payments (
    tenant_id     text NOT NULL,
    store_id      text NOT NULL,
    payment_id    text NOT NULL,
    refund_id     text NOT NULL DEFAULT '',
    kind          text NOT NULL,           -- capture | refund
    order_id      text NOT NULL,
    device_id     text NOT NULL,
    amount_minor  bigint NOT NULL,
    currency      text NOT NULL,
    method        text NOT NULL DEFAULT '',
    reason        text NOT NULL DEFAULT '',
    occurred_at   timestamptz NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (tenant_id, store_id, payment_id, refund_id)
);

CREATE TABLE receipts (
    tenant_id     text NOT NULL,
    store_id      text NOT NULL,
    receipt_id    text NOT NULL,
    order_id      text NOT NULL,
    device_id     text NOT NULL,
    number        text NOT NULL,
    total_minor   bigint NOT NULL,
    currency      text NOT NULL,
    issued_at     timestamptz NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (tenant_id, store_id, receipt_id)
);

CREATE TABLE availability_overrides (
    tenant_id   text NOT NULL,
    store_id    text NOT NULL,
    sku         text NOT NULL,
    available   boolean NOT NULL,
    until       timestamptz,
    device_id   text NOT NULL,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, store_id, sku)
);

-- Commands ----------------------------------------------------------------------------------

-- One row per command as the portal sent it (device_id NULL: store-wide).
CREATE TABLE commands (
    tenant_id     text NOT NULL,
    store_id      text NOT NULL,
    command_id    text NOT NULL,
    device_id     text,
    kind          text NOT NULL,
    envelope      bytea NOT NULL,          -- the MessagePack envelope as received
    requested_by  text NOT NULL,
    approvers     text[] NOT NULL,
    issued_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    rejected_code text,                     -- set when refused at intake
    PRIMARY KEY (tenant_id, command_id)
);

-- One row per (command, device): the device actor's inbox. inbox_seq keeps issue order.
CREATE TABLE command_inbox (
    inbox_seq        bigserial UNIQUE,
    tenant_id        text NOT NULL,
    store_id         text NOT NULL,
    device_id        text NOT NULL,
    command_id       text NOT NULL,
    state            text NOT NULL,         -- queued | delivered | acked | failed | expired
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    expires_at       timestamptz NOT NULL,
    last_code        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, command_id, device_id)
);
CREATE INDEX command_inbox_pending ON command_inbox (tenant_id, store_id, device_id, inbox_seq)
    WHERE state IN ('queued', 'delivered');

-- The audit trail: every transition of every command.
CREATE TABLE command_log (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    store_id    text NOT NULL,
    command_id  text NOT NULL,
    device_id   text,
    state       text NOT NULL,
    attempt     integer NOT NULL DEFAULT 0,
    code        text,
    detail      text NOT NULL DEFAULT '',
    actor       text NOT NULL,              -- portal | broker | device
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX command_log_command ON command_log (tenant_id, command_id, id);

-- Every ack a device sent, matched or not.
CREATE TABLE command_acks (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    store_id    text NOT NULL,
    device_id   text NOT NULL,
    command_id  text NOT NULL,
    outcome     text NOT NULL,
    code        text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    acked_at    timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    effect      text NOT NULL               -- applied_transition | duplicate | after_final | unknown_command
);

-- Broker instances report here so `tillsync status` can list them.
CREATE TABLE broker_instances (
    instance_id      text PRIMARY KEY,
    host             text NOT NULL,
    started_at       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    resident_actors  bigint NOT NULL DEFAULT 0
);
