-- Read models converge whatever order a device's events arrive in: staleness is decided per
-- fact (a group of fields one event kind writes), by the device seq that last wrote the group,
-- not per row (broker/src/ingest/plan.rs). last_seq stays the newest seq on the row.

-- The seq of the order_opened that wrote currency, table_label and opened_at. Before one
-- arrives: minus the seq of the order's earliest event, whose time stands in for opened_at (a
-- lower seq is newer, any order_opened newer still). 0 once another device took the row.
ALTER TABLE orders ADD COLUMN opened_seq bigint NOT NULL DEFAULT 0;
-- The seq of the order_status_changed that wrote status; 0 for none (status 'open').
ALTER TABLE orders ADD COLUMN status_seq bigint NOT NULL DEFAULT 0;
-- The seq of the order_item_added that wrote sku, name, quantity and unit_price_minor.
ALTER TABLE order_items ADD COLUMN added_seq bigint NOT NULL DEFAULT 0;

-- Rows written before: every fact as new as the row, as the per-row check took it, except the
-- facts never written (an order without currency never saw its order_opened; a line without
-- sku never saw its order_item_added), which any late event of theirs may still fill.
UPDATE orders SET opened_seq = CASE WHEN currency = '' THEN 0 ELSE last_seq END, status_seq = last_seq;
UPDATE order_items SET added_seq = CASE WHEN sku = '' THEN 0 ELSE last_seq END;
