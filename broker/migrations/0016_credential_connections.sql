-- Every connection the callout admitted, so a revocation closes each of them on whichever node
-- it lives, not just the last one recorded on `credentials`. A connection cannot outlive its
-- user JWT (TILLSYNC_AUTH_TTL_S), so rows older than that are pruned.
CREATE TABLE credential_connections (
    public_key  text NOT NULL,
    server_id   text NOT NULL,
    client_id   bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (public_key, server_id, client_id)
);
CREATE INDEX credential_connections_at ON credential_connections (at);
-- How many connections the revocation closed (`tillsync devices show`).
ALTER TABLE credentials ADD COLUMN kicked_connections integer;
