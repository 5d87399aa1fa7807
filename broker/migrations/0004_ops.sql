-- Operator tooling (`tillsync`): replay progress, and conflicts recorded once per message.

-- How far a named replay got, in the database it replays into, so `--resume` continues there.
CREATE TABLE replay_progress (
    name             text PRIMARY KEY,
    filter_subject   text NOT NULL,
    last_stream_seq  bigint NOT NULL,
    applied          bigint NOT NULL DEFAULT 0,
    messages         bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- A stream message that conflicts is recorded once, however often it is processed again
-- (a JetStream redelivery after a lost ack, or `tillsync replay --into-live`), so
-- reprocessing a stream changes nothing.
CREATE FUNCTION conflicts_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.stream_seq IS NOT NULL AND EXISTS (
        SELECT 1 FROM conflicts c
        WHERE c.tenant_id = NEW.tenant_id AND c.store_id = NEW.store_id AND c.device_id = NEW.device_id
          AND c.event_id = NEW.event_id AND c.kind = NEW.kind AND c.stream_seq = NEW.stream_seq
    ) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER conflicts_once BEFORE INSERT ON conflicts FOR EACH ROW EXECUTE FUNCTION conflicts_once();
