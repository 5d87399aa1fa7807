-- Device identity (docs/security.md). NATS asks the broker about every connection (auth
-- callout); these tables are what it answers from.

-- One-time activation codes, stored only as their SHA-256. `tillsync devices add` (purpose
-- `activate`) and `tillsync devices rotate` (purpose `rotate`) issue them.
CREATE TABLE activation_codes (
    code_hash   text PRIMARY KEY,
    tenant_id   text NOT NULL,
    store_id    text NOT NULL,
    device_id   text NOT NULL,
    purpose     text NOT NULL CHECK (purpose IN ('activate', 'rotate')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    used_from   text
);

CREATE INDEX activation_codes_device ON activation_codes (tenant_id, store_id, device_id);

-- NATS credentials tillsync issued: a device's key (from activation) or a portal's key (one
-- tenant). Only public keys are kept. A revoked key is refused at its next connect; the broker
-- also disconnects its live connection (`kicked_at`), found by the last connection it allowed.
CREATE TABLE credentials (
    public_key       text PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('device', 'portal')),
    tenant_id        text NOT NULL,
    store_id         text,
    device_id        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text NOT NULL,
    revoked_at       timestamptz,
    revoked_by       text,
    revoke_reason    text,
    kicked_at        timestamptz,
    last_server_id   text,
    last_client_id   bigint,
    last_host        text,
    last_connect_at  timestamptz,
    CHECK ((kind = 'device') = (device_id IS NOT NULL AND store_id IS NOT NULL))
);

CREATE INDEX credentials_device ON credentials (tenant_id, store_id, device_id);
CREATE INDEX credentials_to_kick ON credentials (revoked_at) WHERE revoked_at IS NOT NULL AND kicked_at IS NULL;

-- Who did what to an identity, when, and from where: codes issued, activations (and refused
-- ones), rotations, revocations, and refused connections (at most one row a minute per key).
CREATE TABLE identity_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    action      text NOT NULL,
    reason      text,
    tenant_id   text,
    store_id    text,
    device_id   text,
    public_key  text,
    actor       text NOT NULL,
    remote      text,
    detail      text NOT NULL DEFAULT ''
);

CREATE INDEX identity_audit_device ON identity_audit (tenant_id, store_id, device_id, at);
CREATE INDEX identity_audit_key ON identity_audit (public_key, action, at);
