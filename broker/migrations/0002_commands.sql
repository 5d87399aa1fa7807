-- Commands down: what the broker's sweeper and the status outbox look up.

-- Due redeliveries and expiries, scanned by the broker's command sweeper.
CREATE INDEX command_inbox_due ON command_inbox (next_attempt_at) WHERE state IN ('queued', 'delivered');
CREATE INDEX command_inbox_expiry ON command_inbox (expires_at) WHERE state IN ('queued', 'delivered');

-- The status outbox: a transition is committed first and published to the portal after; rows
-- still unpublished (broker killed in between) are published again by the sweeper.
ALTER TABLE command_log ADD COLUMN published boolean NOT NULL DEFAULT false;
CREATE INDEX command_log_unpublished ON command_log (id) WHERE NOT published;

-- "Was this command already acked by its device?" when the same ack comes again.
CREATE INDEX command_acks_command ON command_acks (tenant_id, command_id, device_id);
