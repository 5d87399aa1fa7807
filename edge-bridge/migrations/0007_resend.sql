-- Resends: a row acked by JetStream but not covered by the broker's watermark is published
-- again (on reconnect, on a stalled watermark, on the broker's request). Each resend gets its
-- own Nats-Msg-Id (`<device>:<event_id>:r<resends>`), because JetStream remembers the first id
-- for its whole duplicate window even when the message itself was lost.
ALTER TABLE outbox ADD COLUMN resends INTEGER NOT NULL DEFAULT 0;
-- Rows rewound for a resend since the file was created, for `tillsync-edge status`.
ALTER TABLE bridge_state ADD COLUMN events_resent INTEGER NOT NULL DEFAULT 0;
