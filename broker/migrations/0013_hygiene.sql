-- Fleet hygiene (docs/operations.md, "Quarantine" and "Decommissioning").

-- A quarantined message an operator decided never to redrive (e.g. the heartbeats of a device
-- with a mistyped tenant). Recorded once, with who and why; the row and its bytes are kept.
ALTER TABLE quarantine
    ADD COLUMN dismissed_at  timestamptz,
    ADD COLUMN dismissed_by  text,
    ADD COLUMN dismiss_note  text;

-- A heartbeat is a device's state, not an event: a refused heartbeat repeating one still
-- pending (same subject, same reason) replaces its payload and stream seq and counts here, so
-- a device with a mistyped tenant keeps one row instead of 2,880 a day.
ALTER TABLE quarantine
    ADD COLUMN repeats           integer NOT NULL DEFAULT 0,
    ADD COLUMN last_received_at  timestamptz;

-- What still needs an operator: never redriven and not dismissed. `tillsync quarantine list
-- --pending`, bulk redrive and `tillsync status` count these.
CREATE VIEW quarantine_pending AS
    SELECT * FROM quarantine WHERE redrive_count = 0 AND dismissed_at IS NULL;
CREATE INDEX quarantine_pending_received ON quarantine (received_at) WHERE redrive_count = 0 AND dismissed_at IS NULL;
CREATE INDEX quarantine_pending_subject ON quarantine (subject, reason) WHERE redrive_count = 0 AND dismissed_at IS NULL;

-- A device or tenant taken out of service: its credentials are revoked, its JetStream
-- consumers deleted and its unfinished commands cancelled; activation is refused from then
-- on. Its rows (orders, payments, ...) stay: they are the business's records.
ALTER TABLE devices
    ADD COLUMN decommissioned_at  timestamptz,
    ADD COLUMN decommissioned_by  text;
ALTER TABLE tenants
    ADD COLUMN decommissioned_at  timestamptz,
    ADD COLUMN decommissioned_by  text;
