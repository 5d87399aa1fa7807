-- Head office's configuration of this store (issue 18), applied change set by change set.
-- bridge_state.config_revision is the applied configuration version (0: none yet).

-- The store's configuration now: one row per live entity (deletes remove the row).
CREATE TABLE config_entities (
    type            TEXT NOT NULL,            -- menu_item, tax, setting, ...
    id              TEXT NOT NULL,
    body            TEXT NOT NULL,            -- the entity, JSON
    version         INTEGER NOT NULL,         -- the version that last changed it
    PRIMARY KEY (type, id)
) WITHOUT ROWID;

-- The changes of each applied version, for `GET /v1/config/changes?since=V`. Continuous from
-- bridge_state.config_log_from: a snapshot restarts it, and only the last versions are kept.
CREATE TABLE config_changes (
    version         INTEGER NOT NULL,
    ord             INTEGER NOT NULL,         -- position in its change set
    type            TEXT NOT NULL,
    id              TEXT NOT NULL,
    body            TEXT,                     -- NULL: deleted
    PRIMARY KEY (version, ord)
) WITHOUT ROWID;

-- Each applied change set and its hand-off to the handler: written in the apply transaction,
-- handed_at_ms set once the handler took it, so a crash in between hands it again.
CREATE TABLE config_applied (
    version         INTEGER PRIMARY KEY,
    snapshot        INTEGER NOT NULL,         -- 1: a whole configuration, replacing the last
    document        TEXT NOT NULL,            -- the JSON handed to the handler
    published_at_ms INTEGER NOT NULL,
    applied_at_ms   INTEGER NOT NULL,
    handed_at_ms    INTEGER
);

-- Deltas and snapshots that could not be applied: kept so nothing is refused silently.
CREATE TABLE refused_config (
    id              INTEGER PRIMARY KEY,
    subject         TEXT NOT NULL,
    stream_seq      INTEGER NOT NULL,
    code            TEXT NOT NULL,
    detail          TEXT NOT NULL,
    payload         BLOB NOT NULL,
    at_ms           INTEGER NOT NULL,
    UNIQUE (subject, stream_seq)
);

-- Stream seq of the last applied delta on TILLSYNC_CONFIG: the device reads on from the next.
ALTER TABLE bridge_state ADD COLUMN config_delta_seq INTEGER NOT NULL DEFAULT 0;
-- config_changes holds every change of the versions after this one.
ALTER TABLE bridge_state ADD COLUMN config_log_from INTEGER NOT NULL DEFAULT 0;
