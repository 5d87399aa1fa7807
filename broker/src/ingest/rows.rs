//! What a batch writes besides the ledger, in one statement: the folded read-model rows (one
//! upsert per table) and the devices' sequence state.
//!
//! One statement, not one per table: a batch of live traffic holds a few dozen events, and at
//! that size the round trips (a wakeup of the broker and of the backend each, an executor
//! start per statement) cost more than the rows. Every part is present in every execution,
//! with empty arrays where a table has nothing, so the statement text never varies and stays
//! prepared on its connection.

use sqlx::PgConnection;

use super::plan::Folded;
use super::writer::DeviceUpdate;
use crate::ts;

macro_rules! col {
    ($rows:expr, |$r:ident| $e:expr) => {
        $rows.iter().map(|$r| $e).collect::<Vec<_>>()
    };
}

/// Data-modifying `WITH` parts all run to completion whether or not the final `SELECT` reads
/// them. They share one snapshot, so no part may depend on another's rows: device gaps opened
/// by this batch are inserted before this statement (see `writer::commit`).
/// The fact versions (`opened_seq`, `status_seq`, `added_seq`, migration 0006) came later and
/// take the last parameters, $59-$61, so the others kept their numbers.
const WRITE: &str = "
WITH
orders_w AS (
  INSERT INTO orders (tenant_id, store_id, order_id, device_id, currency, table_label, status, opened_at, updated_at,
                      last_seq, opened_seq, status_seq)
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::timestamptz[], $9::timestamptz[], $10::int8[], $59::int8[], $60::int8[])
  ON CONFLICT (tenant_id, store_id, order_id) DO UPDATE SET
    device_id = excluded.device_id, currency = excluded.currency, table_label = excluded.table_label,
    status = excluded.status, opened_at = excluded.opened_at, updated_at = excluded.updated_at,
    last_seq = excluded.last_seq, opened_seq = excluded.opened_seq, status_seq = excluded.status_seq),
items_w AS (
  INSERT INTO order_items (tenant_id, store_id, order_id, line_id, device_id, sku, name, quantity, unit_price_minor,
                           removed, last_seq, added_seq)
  SELECT * FROM UNNEST($11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                       $18::int4[], $19::int8[], $20::bool[], $21::int8[], $61::int8[])
  ON CONFLICT (tenant_id, store_id, order_id, line_id) DO UPDATE SET
    device_id = excluded.device_id, sku = excluded.sku, name = excluded.name, quantity = excluded.quantity,
    unit_price_minor = excluded.unit_price_minor, removed = excluded.removed, last_seq = excluded.last_seq,
    added_seq = excluded.added_seq),
payments_w AS (
  INSERT INTO payments (tenant_id, store_id, payment_id, refund_id, kind, order_id, device_id, amount_minor, currency, method, reason, occurred_at, seq)
  SELECT * FROM UNNEST($22::text[], $23::text[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[],
                       $29::int8[], $30::text[], $31::text[], $32::text[], $33::timestamptz[], $34::int8[])
  ON CONFLICT (tenant_id, store_id, payment_id, refund_id) DO UPDATE SET
    kind = excluded.kind, order_id = excluded.order_id, device_id = excluded.device_id,
    amount_minor = excluded.amount_minor, currency = excluded.currency, method = excluded.method,
    reason = excluded.reason, occurred_at = excluded.occurred_at, seq = excluded.seq),
receipts_w AS (
  INSERT INTO receipts (tenant_id, store_id, receipt_id, order_id, device_id, number, total_minor, currency, issued_at, seq)
  SELECT * FROM UNNEST($35::text[], $36::text[], $37::text[], $38::text[], $39::text[], $40::text[], $41::int8[],
                       $42::text[], $43::timestamptz[], $44::int8[])
  ON CONFLICT (tenant_id, store_id, receipt_id) DO UPDATE SET
    order_id = excluded.order_id, device_id = excluded.device_id, number = excluded.number,
    total_minor = excluded.total_minor, currency = excluded.currency, issued_at = excluded.issued_at,
    seq = excluded.seq),
overrides_w AS (
  INSERT INTO availability_overrides (tenant_id, store_id, sku, available, until, device_id, seq, updated_at)
  SELECT * FROM UNNEST($45::text[], $46::text[], $47::text[], $48::bool[], $49::timestamptz[], $50::text[],
                       $51::int8[], $52::timestamptz[])
  ON CONFLICT (tenant_id, store_id, sku) DO UPDATE SET
    available = excluded.available, until = excluded.until, device_id = excluded.device_id,
    seq = excluded.seq, updated_at = excluded.updated_at),
devices_w AS (
  INSERT INTO devices (tenant_id, store_id, device_id, first_seen, last_seen, last_seq, watermark, gaps, online)
  SELECT t, s, d, now(), now(), q, w, g, true
  FROM UNNEST($53::text[], $54::text[], $55::text[], $56::int8[], $57::int8[], $58::int8[]) AS u(t, s, d, q, w, g)
  ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE SET
    last_seen = now(), online = true,
    last_seq = GREATEST(devices.last_seq, excluded.last_seq),
    watermark = GREATEST(devices.watermark, excluded.watermark),
    gaps = devices.gaps + excluded.gaps),
gaps_filled AS (
  UPDATE device_gaps g SET filled_at = now()
  FROM UNNEST($53::text[], $54::text[], $55::text[], $57::int8[]) AS u(t, s, d, w)
  WHERE g.tenant_id = u.t AND g.store_id = u.s AND g.device_id = u.d AND g.to_seq <= u.w AND g.filled_at IS NULL)
SELECT 1";

/// Upserts the folded rows and the devices' state (last seq, watermark, gap count, gaps now
/// filled). Nothing to write, no round trip.
pub async fn write(tx: &mut PgConnection, f: &Folded, devices: &[DeviceUpdate]) -> Result<(), sqlx::Error> {
    let empty = f.orders.is_empty()
        && f.items.is_empty()
        && f.payments.is_empty()
        && f.receipts.is_empty()
        && f.overrides.is_empty();
    if empty && devices.is_empty() {
        return Ok(());
    }
    let orders: Vec<_> = f.orders.values().collect();
    let items: Vec<_> = f.items.values().collect();
    let payments: Vec<_> = f.payments.values().collect();
    let receipts: Vec<_> = f.receipts.values().collect();
    let overrides: Vec<_> = f.overrides.values().collect();
    sqlx::query(WRITE)
        .bind(col!(orders, |x| x.key.0.clone()))
        .bind(col!(orders, |x| x.key.1.clone()))
        .bind(col!(orders, |x| x.key.2.clone()))
        .bind(col!(orders, |x| x.device_id.clone()))
        .bind(col!(orders, |x| x.currency.clone()))
        .bind(col!(orders, |x| x.table_label.clone()))
        .bind(col!(orders, |x| x.status.clone()))
        .bind(col!(orders, |x| ts(x.opened_at_ms)))
        .bind(col!(orders, |x| ts(x.updated_at_ms)))
        .bind(col!(orders, |x| x.last_seq))
        .bind(col!(items, |x| x.key.0.clone()))
        .bind(col!(items, |x| x.key.1.clone()))
        .bind(col!(items, |x| x.key.2.clone()))
        .bind(col!(items, |x| x.key.3.clone()))
        .bind(col!(items, |x| x.device_id.clone()))
        .bind(col!(items, |x| x.sku.clone()))
        .bind(col!(items, |x| x.name.clone()))
        .bind(col!(items, |x| x.quantity))
        .bind(col!(items, |x| x.unit_price_minor))
        .bind(col!(items, |x| x.removed))
        .bind(col!(items, |x| x.last_seq))
        .bind(col!(payments, |x| x.key.0.clone()))
        .bind(col!(payments, |x| x.key.1.clone()))
        .bind(col!(payments, |x| x.key.2.clone()))
        .bind(col!(payments, |x| x.key.3.clone()))
        .bind(col!(payments, |x| x.kind))
        .bind(col!(payments, |x| x.order_id.clone()))
        .bind(col!(payments, |x| x.device_id.clone()))
        .bind(col!(payments, |x| x.amount_minor))
        .bind(col!(payments, |x| x.currency.clone()))
        .bind(col!(payments, |x| x.method.clone()))
        .bind(col!(payments, |x| x.reason.clone()))
        .bind(col!(payments, |x| ts(x.occurred_at_ms)))
        .bind(col!(payments, |x| x.seq))
        .bind(col!(receipts, |x| x.key.0.clone()))
        .bind(col!(receipts, |x| x.key.1.clone()))
        .bind(col!(receipts, |x| x.key.2.clone()))
        .bind(col!(receipts, |x| x.order_id.clone()))
        .bind(col!(receipts, |x| x.device_id.clone()))
        .bind(col!(receipts, |x| x.number.clone()))
        .bind(col!(receipts, |x| x.total_minor))
        .bind(col!(receipts, |x| x.currency.clone()))
        .bind(col!(receipts, |x| ts(x.issued_at_ms)))
        .bind(col!(receipts, |x| x.seq))
        .bind(col!(overrides, |x| x.key.0.clone()))
        .bind(col!(overrides, |x| x.key.1.clone()))
        .bind(col!(overrides, |x| x.key.2.clone()))
        .bind(col!(overrides, |x| x.available))
        .bind(col!(overrides, |x| x.until_ms.map(ts)))
        .bind(col!(overrides, |x| x.device_id.clone()))
        .bind(col!(overrides, |x| x.seq))
        .bind(col!(overrides, |x| ts(x.updated_at_ms)))
        .bind(col!(devices, |d| d.addr.tenant_id.clone()))
        .bind(col!(devices, |d| d.addr.store_id.clone()))
        .bind(col!(devices, |d| d.addr.device_id.clone()))
        .bind(col!(devices, |d| d.max_seq as i64))
        .bind(col!(devices, |d| d.projected_watermark as i64))
        .bind(col!(devices, |d| d.gaps.len() as i64))
        .bind(col!(orders, |x| x.opened_seq))
        .bind(col!(orders, |x| x.status_seq))
        .bind(col!(items, |x| x.added_seq))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
