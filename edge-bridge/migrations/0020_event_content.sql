-- What each POS-chosen event id was sent with (SHA-256 of occurred_at_ms as given and the body,
-- EventDraft::content_hash): a resubmit with the same id and the same content is a retry
-- (200 duplicate), with other content a conflict (409 event_id_reused, the original kept).
-- NULL for ids remembered before this column: those still answer duplicate.
ALTER TABLE event_ids ADD COLUMN content_hash BLOB;
