-- Partitions (docs/architecture.md, "Partitions and ownership"). Each store belongs to one of a
-- fixed number of partitions; one broker instance at a time owns a partition.

-- The partition count this database was set up with. Every instance must run with it: the
-- partition of a store is baked into the subjects the streams stored.
CREATE TABLE partition_settings (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions  integer NOT NULL
);

-- The fence: the current owner of each partition and its epoch. Taking a partition bumps the
-- epoch (the update waits for commits in flight under the old epoch, which hold the row FOR
-- SHARE); every commit for a partition checks its epoch is still the current one, so a commit
-- by an instance that lost the partition (killed, paused, cut off) rolls back.
CREATE TABLE partition_owners (
    partition    integer PRIMARY KEY,
    epoch        bigint NOT NULL,
    instance_id  text NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at  timestamptz
);

-- Every epoch ever taken, for `tillsync status` and for checking that no partition had two
-- owners committing at once.
CREATE TABLE partition_epochs (
    partition    integer NOT NULL,
    epoch        bigint NOT NULL,
    instance_id  text NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at  timestamptz,
    PRIMARY KEY (partition, epoch)
);

-- Which ownership committed each event (NULL: written by `tillsync replay` or before partitions).
ALTER TABLE processed_events ADD COLUMN partition integer, ADD COLUMN epoch bigint;

-- The check each commit for a partition makes, first thing in its transaction: the epoch must
-- be current and not released. It holds the owner row FOR SHARE until the commit, so a takeover
-- waits for it, and raises SQLSTATE TSF01 when the partition was taken over.
CREATE FUNCTION tillsync_fence(p integer, e bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM partition_owners WHERE partition = p AND epoch = e AND released_at IS NULL FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'partition % was taken over: epoch % is not current', p, e USING ERRCODE = 'TSF01';
    END IF;
END $$;
