-- Signals for what can stall silently (broker/src/monitor.rs, `tillsync status`).

-- Watermark stall: the seq the broker's watermark is waiting to reach (the device's last seq
-- as its heartbeat reports it, when that was above the watermark) and since when. It
-- is cleared once the watermark reaches that seq, so a watermark that keeps moving under load
-- is not a stall; one that waits longer than a bound is.
ALTER TABLE devices
    ADD COLUMN watermark_wait_seq   bigint,
    ADD COLUMN watermark_wait_since timestamptz;

-- Open gaps are counted by tenant every few seconds and the repair task looks for old ones;
-- filled ones are the vast majority.
CREATE INDEX device_gaps_open ON device_gaps (tenant_id, detected_at) WHERE filled_at IS NULL;

-- Stalled devices are counted by tenant every few seconds; few devices ever wait.
CREATE INDEX devices_watermark_wait ON devices (tenant_id, watermark_wait_since) WHERE watermark_wait_since IS NOT NULL;
