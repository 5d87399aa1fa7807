//! Upserts of folded read-model rows: one statement per table per batch.

use sqlx::PgConnection;

use super::plan::Folded;
use crate::ts;

macro_rules! col {
    ($rows:expr, |$r:ident| $e:expr) => {
        $rows.iter().map(|$r| $e).collect::<Vec<_>>()
    };
}

pub async fn write(tx: &mut PgConnection, f: &Folded) -> Result<(), sqlx::Error> {
    if !f.orders.is_empty() {
        let r: Vec<_> = f.orders.values().collect();
        sqlx::query(
            "INSERT INTO orders (tenant_id, store_id, order_id, device_id, currency, table_label, status, opened_at, updated_at, last_seq)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::timestamptz[], $9::timestamptz[], $10::int8[])
             ON CONFLICT (tenant_id, store_id, order_id) DO UPDATE SET
               device_id = excluded.device_id, currency = excluded.currency, table_label = excluded.table_label,
               status = excluded.status, opened_at = excluded.opened_at, updated_at = excluded.updated_at,
               last_seq = excluded.last_seq",
        )
        .bind(col!(r, |x| x.key.0.clone()))
        .bind(col!(r, |x| x.key.1.clone()))
        .bind(col!(r, |x| x.key.2.clone()))
        .bind(col!(r, |x| x.device_id.clone()))
        .bind(col!(r, |x| x.currency.clone()))
        .bind(col!(r, |x| x.table_label.clone()))
        .bind(col!(r, |x| x.status.clone()))
        .bind(col!(r, |x| ts(x.opened_at_ms)))
        .bind(col!(r, |x| ts(x.updated_at_ms)))
        .bind(col!(r, |x| x.last_seq))
        .execute(&mut *tx)
        .await?;
    }
    if !f.items.is_empty() {
        let r: Vec<_> = f.items.values().collect();
        sqlx::query(
            "INSERT INTO order_items (tenant_id, store_id, order_id, line_id, device_id, sku, name, quantity, unit_price_minor, removed, last_seq)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::int4[], $9::int8[], $10::bool[], $11::int8[])
             ON CONFLICT (tenant_id, store_id, order_id, line_id) DO UPDATE SET
               device_id = excluded.device_id, sku = excluded.sku, name = excluded.name, quantity = excluded.quantity,
               unit_price_minor = excluded.unit_price_minor, removed = excluded.removed, last_seq = excluded.last_seq",
        )
        .bind(col!(r, |x| x.key.0.clone()))
        .bind(col!(r, |x| x.key.1.clone()))
        .bind(col!(r, |x| x.key.2.clone()))
        .bind(col!(r, |x| x.key.3.clone()))
        .bind(col!(r, |x| x.device_id.clone()))
        .bind(col!(r, |x| x.sku.clone()))
        .bind(col!(r, |x| x.name.clone()))
        .bind(col!(r, |x| x.quantity))
        .bind(col!(r, |x| x.unit_price_minor))
        .bind(col!(r, |x| x.removed))
        .bind(col!(r, |x| x.last_seq))
        .execute(&mut *tx)
        .await?;
    }
    if !f.payments.is_empty() {
        let r: Vec<_> = f.payments.values().collect();
        sqlx::query(
            "INSERT INTO payments (tenant_id, store_id, payment_id, refund_id, kind, order_id, device_id, amount_minor, currency, method, reason, occurred_at, seq)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::int8[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::int8[])
             ON CONFLICT (tenant_id, store_id, payment_id, refund_id) DO UPDATE SET
               kind = excluded.kind, order_id = excluded.order_id, device_id = excluded.device_id,
               amount_minor = excluded.amount_minor, currency = excluded.currency, method = excluded.method,
               reason = excluded.reason, occurred_at = excluded.occurred_at, seq = excluded.seq",
        )
        .bind(col!(r, |x| x.key.0.clone()))
        .bind(col!(r, |x| x.key.1.clone()))
        .bind(col!(r, |x| x.key.2.clone()))
        .bind(col!(r, |x| x.key.3.clone()))
        .bind(col!(r, |x| x.kind))
        .bind(col!(r, |x| x.order_id.clone()))
        .bind(col!(r, |x| x.device_id.clone()))
        .bind(col!(r, |x| x.amount_minor))
        .bind(col!(r, |x| x.currency.clone()))
        .bind(col!(r, |x| x.method.clone()))
        .bind(col!(r, |x| x.reason.clone()))
        .bind(col!(r, |x| ts(x.occurred_at_ms)))
        .bind(col!(r, |x| x.seq))
        .execute(&mut *tx)
        .await?;
    }
    if !f.receipts.is_empty() {
        let r: Vec<_> = f.receipts.values().collect();
        sqlx::query(
            "INSERT INTO receipts (tenant_id, store_id, receipt_id, order_id, device_id, number, total_minor, currency, issued_at, seq)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                                  $8::text[], $9::timestamptz[], $10::int8[])
             ON CONFLICT (tenant_id, store_id, receipt_id) DO UPDATE SET
               order_id = excluded.order_id, device_id = excluded.device_id, number = excluded.number,
               total_minor = excluded.total_minor, currency = excluded.currency, issued_at = excluded.issued_at,
               seq = excluded.seq",
        )
        .bind(col!(r, |x| x.key.0.clone()))
        .bind(col!(r, |x| x.key.1.clone()))
        .bind(col!(r, |x| x.key.2.clone()))
        .bind(col!(r, |x| x.order_id.clone()))
        .bind(col!(r, |x| x.device_id.clone()))
        .bind(col!(r, |x| x.number.clone()))
        .bind(col!(r, |x| x.total_minor))
        .bind(col!(r, |x| x.currency.clone()))
        .bind(col!(r, |x| ts(x.issued_at_ms)))
        .bind(col!(r, |x| x.seq))
        .execute(&mut *tx)
        .await?;
    }
    if !f.overrides.is_empty() {
        let r: Vec<_> = f.overrides.values().collect();
        sqlx::query(
            "INSERT INTO availability_overrides (tenant_id, store_id, sku, available, until, device_id, seq, updated_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[], $5::timestamptz[], $6::text[],
                                  $7::int8[], $8::timestamptz[])
             ON CONFLICT (tenant_id, store_id, sku) DO UPDATE SET
               available = excluded.available, until = excluded.until, device_id = excluded.device_id,
               seq = excluded.seq, updated_at = excluded.updated_at",
        )
        .bind(col!(r, |x| x.key.0.clone()))
        .bind(col!(r, |x| x.key.1.clone()))
        .bind(col!(r, |x| x.key.2.clone()))
        .bind(col!(r, |x| x.available))
        .bind(col!(r, |x| x.until_ms.map(ts)))
        .bind(col!(r, |x| x.device_id.clone()))
        .bind(col!(r, |x| x.seq))
        .bind(col!(r, |x| ts(x.updated_at_ms)))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
