-- Head office's configuration of each tenant's stores (issue 18, docs/operations.md
-- "Configuration"). Every table is keyed by tenant first: no tenant reaches another's rows.

-- The tenant's configuration as head office last published it (tenant scope). A delete
-- removes the row; the versions below keep the history.
CREATE TABLE config_entities (
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    body         jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, entity_type, entity_id)
);

-- A store's own value of a setting (published with --store); it wins over the tenant's.
CREATE TABLE config_store_settings (
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
    store_id     text NOT NULL,
    setting_id   text NOT NULL,
    body         jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, store_id, setting_id)
);

-- Each store's current version. New versions are allocated under this row's lock, in the
-- publishing transaction, so they are gap-free. `snapshot_version`: the version of the
-- snapshot last put on TILLSYNC_CONFIG_SNAPSHOTS.
CREATE TABLE config_stores (
    tenant_id         text NOT NULL REFERENCES tenants (tenant_id),
    store_id          text NOT NULL,
    version           bigint NOT NULL DEFAULT 0,
    snapshot_version  bigint NOT NULL DEFAULT 0,
    snapshot_at       timestamptz,
    PRIMARY KEY (tenant_id, store_id)
);

-- One row per version of a store: who published it and when, and once the distributor has
-- put its delta on TILLSYNC_CONFIG, the stream sequence (the PubAck's) and when.
CREATE TABLE config_versions (
    tenant_id       text NOT NULL,
    store_id        text NOT NULL,
    version         bigint NOT NULL CHECK (version > 0),
    publish_id      text NOT NULL,
    published_by    text NOT NULL,
    published_at    timestamptz NOT NULL,
    delta_seq       bigint,
    distributed_at  timestamptz,
    PRIMARY KEY (tenant_id, store_id, version),
    FOREIGN KEY (tenant_id, store_id) REFERENCES config_stores (tenant_id, store_id)
);

CREATE INDEX config_versions_undistributed ON config_versions (tenant_id, store_id, version)
    WHERE distributed_at IS NULL;

-- The changes of each version as the store sees them: the effective body, or NULL (a
-- tombstone). Folding a store's changes up to a version gives its state at that version.
CREATE TABLE config_changes (
    tenant_id    text NOT NULL,
    store_id     text NOT NULL,
    version      bigint NOT NULL,
    ord          integer NOT NULL,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    body         jsonb,
    PRIMARY KEY (tenant_id, store_id, version, ord),
    FOREIGN KEY (tenant_id, store_id, version) REFERENCES config_versions (tenant_id, store_id, version)
);

-- A store's current effective configuration: the tenant's entities, a store's own setting
-- instead of the tenant's. What a snapshot is, in one query.
CREATE VIEW config_effective AS
    SELECT cs.tenant_id, cs.store_id, e.entity_type, e.entity_id, e.body
    FROM config_stores cs
    JOIN config_entities e ON e.tenant_id = cs.tenant_id
    WHERE NOT (e.entity_type = 'setting' AND EXISTS (
        SELECT 1 FROM config_store_settings o
        WHERE o.tenant_id = cs.tenant_id AND o.store_id = cs.store_id AND o.setting_id = e.entity_id))
    UNION ALL
    SELECT o.tenant_id, o.store_id, 'setting', o.setting_id, o.body
    FROM config_store_settings o;

-- Refused publishes, kept: what was refused, why, by whom, when. Nothing else is written.
CREATE TABLE config_refusals (
    tenant_id     text NOT NULL,
    id            bigserial,
    store_id      text,
    code          text NOT NULL,
    detail        text NOT NULL,
    published_by  text NOT NULL,
    changes       integer NOT NULL,
    refused_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
