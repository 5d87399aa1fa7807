-- A stream message that conflicts is recorded once, however often it is processed again (a
-- JetStream redelivery after a lost ack, or `tillsync replay --into-live`). The writer's
-- ON CONFLICT DO NOTHING relies on this index; it replaces the trigger of 0004.
DROP TRIGGER conflicts_once ON conflicts;
DROP FUNCTION conflicts_once();
CREATE UNIQUE INDEX conflicts_once ON conflicts (tenant_id, store_id, device_id, event_id, kind, stream_seq)
    NULLS NOT DISTINCT;
