-- A random nonce in every Nats-Msg-Id this device sets (`<tenant>.<store>.<device>.<nonce>:…`):
-- JetStream dedupes by msg id across a stream, so an id made of names alone could be published
-- first by another client. Empty until the bridge first opens the file and draws one.
ALTER TABLE bridge_state ADD COLUMN msg_id_nonce TEXT NOT NULL DEFAULT '';
