-- Resend requests (broker/src/repair.rs): the broker asks a device to publish a seq range again
-- when an open gap is older than TILLSYNC_GAP_REPAIR_AFTER_S, or when the device's heartbeats
-- report seqs beyond a watermark that has not moved for as long. One row per device asked or
-- watched; written only by the repair task, so it never contends with the ingest writer's
-- locks on devices and device_gaps.
CREATE TABLE device_repairs (
    tenant_id         text NOT NULL,
    store_id          text NOT NULL,
    device_id         text NOT NULL,
    behind_since      timestamptz,              -- reported ahead of a watermark unchanged since then
    behind_watermark  bigint,                   -- that watermark
    requested_at      timestamptz,              -- last resend request sent to the device
    requests          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, store_id, device_id)
);

-- Open gaps are found through the partial index device_gaps_open (migration 0009).
