-- Commands tell the truth: a command is published to its device's stream once, its copies are
-- deleted from the stream when it ends, and an apply after the end is recorded.

-- The stream sequence of the latest copy published to TILLSYNC_COMMANDS (its PubAck), and
-- when it was published: the sweeper checks that copy is still there, less often as it ages.
ALTER TABLE command_inbox ADD COLUMN stream_seq bigint;
ALTER TABLE command_inbox ADD COLUMN published_at timestamptz;
-- Copies that may still be in TILLSYNC_COMMANDS. Emptied once the command is final and they
-- are deleted, so nothing waits in the device's stream to be pulled afterwards.
ALTER TABLE command_inbox ADD COLUMN copies bigint[] NOT NULL DEFAULT '{}';
-- The device applied the command after the portal was told it ended (failed, expired,
-- cancelled): the state stays what the portal was told first, this says what happened.
ALTER TABLE command_inbox ADD COLUMN applied_after_final_at timestamptz;
CREATE INDEX command_inbox_copies ON command_inbox (updated_at)
    WHERE state NOT IN ('queued', 'delivered') AND copies <> '{}';

-- On an `acked` status that corrects an earlier final state: that state.
ALTER TABLE command_log ADD COLUMN corrects text;
