-- The edge bridge's local store: the event outbox, the command ledger and the bridge's state.
-- One SQLite file belongs to exactly one device.

-- Events accepted from the POS, in device seq order, until the broker's watermark covers them.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    envelope        BLOB NOT NULL,            -- the encoded EventEnvelope, published as is
    accepted_at_ms  INTEGER NOT NULL,
    sent_at_ms      INTEGER                   -- set once JetStream acked the publish
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at_ms IS NULL;

-- Event ids the POS chose, kept after pruning so a POS retry never gets a second seq.
CREATE TABLE event_ids (
    event_id        TEXT PRIMARY KEY,
    seq             INTEGER NOT NULL,
    accepted_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX event_ids_age ON event_ids (accepted_at_ms);

-- Exactly one row.
CREATE TABLE bridge_state (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    tenant_id        TEXT,                    -- the device this file belongs to, set on first start
    store_id         TEXT,
    device_id        TEXT,
    last_seq         INTEGER NOT NULL,        -- highest seq ever assigned (survives pruning)
    watermark        INTEGER NOT NULL,        -- the broker's ack watermark, last seen
    config_revision  INTEGER NOT NULL         -- revision of the last applied settings_patch
);
INSERT INTO bridge_state (id, last_seq, watermark, config_revision) VALUES (1, 0, 0, 0);

-- Every command seen, by command_id: the dedupe authority and the stored outcome to re-ack.
CREATE TABLE commands (
    command_id      TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,            -- applying | done
    outcome         TEXT,                     -- applied | failed | rejected
    code            TEXT,
    detail          TEXT NOT NULL DEFAULT '',
    received_at_ms  INTEGER NOT NULL,
    done_at_ms      INTEGER
);

-- Command messages that could not be decoded: kept so nothing is refused silently.
CREATE TABLE refused_commands (
    id              INTEGER PRIMARY KEY,
    subject         TEXT NOT NULL,
    reason          TEXT NOT NULL,
    detail          TEXT NOT NULL,
    payload         BLOB NOT NULL,
    at_ms           INTEGER NOT NULL
);
