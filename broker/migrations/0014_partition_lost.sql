-- When the owner gave a partition up because it could not renew its lease (cut off from NATS),
-- it says so here while it can still reach Postgres, so `tillsync status` stops listing it as
-- the owner before another instance takes over. `released_at` stays NULL: a lost partition
-- is taken over (consumers restarted at their ack floor), not handed over.
ALTER TABLE partition_owners ADD COLUMN lost_at timestamptz;
