-- Watermarks a bridge refused since it started, as its last heartbeat said (0 when it never
-- refused one or its version does not report them). The broker counts the increase between
-- heartbeats in tillsync_bridge_watermarks_refused_total.
ALTER TABLE devices ADD COLUMN watermarks_refused bigint NOT NULL DEFAULT 0;
