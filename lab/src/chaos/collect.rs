//! Reads what Postgres holds into the checker's shapes: the ledger, every read-model row of
//! the run's tenant as the model's text, and each command copy with its final log states.

use sqlx::PgPool;
use tillsync_schemas::CommandState;

use super::history::{CommandRecord, LedgerRow, ModelRow};
use super::model::{item_value, order_value, override_value, payment_value, receipt_value};

pub async fn ledger(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<LedgerRow>> {
    let rows: Vec<(String, String, i64, String)> =
        sqlx::query_as("SELECT device_id, event_id, seq, outcome FROM processed_events WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(device_id, event_id, seq, outcome)| LedgerRow { device_id, event_id, seq, outcome })
        .collect())
}

/// device, key, kind, order, amount, currency, method, reason
type PaymentTuple = (String, String, String, String, i64, String, String, String);
/// command, device, inbox state, rejection, final log states
type CommandTuple = (String, Option<String>, Option<String>, Option<String>, Vec<String>);

fn row(device_id: String, table: &'static str, key: String, value: String) -> ModelRow {
    ModelRow { device_id, table, key, value }
}

pub async fn rows(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<ModelRow>> {
    let mut out = Vec::new();
    let orders: Vec<(String, String, String, Option<String>, String)> =
        sqlx::query_as("SELECT device_id, order_id, currency, table_label, status FROM orders WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(pool)
            .await?;
    for (d, k, currency, table, status) in orders {
        out.push(row(d, "orders", k, order_value(&currency, table.as_deref(), &status)));
    }
    let items: Vec<(String, String, String, String, i64, i64, bool)> = sqlx::query_as(
        "SELECT device_id, order_id || '/' || line_id, sku, name, quantity::int8, unit_price_minor, removed
         FROM order_items WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    for (d, k, sku, name, qty, price, removed) in items {
        out.push(row(d, "order_items", k, item_value(&sku, &name, qty, price, removed)));
    }
    let payments: Vec<PaymentTuple> = sqlx::query_as(
        "SELECT device_id, payment_id || '/' || refund_id, kind, order_id, amount_minor, currency, method, reason
         FROM payments WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    for (d, k, kind, order, amount, currency, method, reason) in payments {
        out.push(row(d, "payments", k, payment_value(&kind, &order, amount, &currency, &method, &reason)));
    }
    let receipts: Vec<(String, String, String, String, i64, String)> = sqlx::query_as(
        "SELECT device_id, receipt_id, order_id, number, total_minor, currency FROM receipts WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    for (d, k, order, number, total, currency) in receipts {
        out.push(row(d, "receipts", k, receipt_value(&order, &number, total, &currency)));
    }
    let overrides: Vec<(String, String, bool, Option<i64>)> = sqlx::query_as(
        "SELECT device_id, sku, available, (extract(epoch FROM until) * 1000)::int8
         FROM availability_overrides WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    for (d, k, available, until) in overrides {
        out.push(row(d, "availability_overrides", k, override_value(available, until)));
    }
    Ok(out)
}

/// Every command copy: its inbox state, intake rejection, and the final states its log holds.
pub async fn commands(pool: &PgPool, tenant: &str) -> sqlx::Result<Vec<CommandRecord>> {
    let finals: Vec<&str> = CommandState::ALL.iter().filter(|s| s.is_final()).map(|s| s.as_str()).collect();
    let rows: Vec<CommandTuple> = sqlx::query_as(
        "SELECT c.command_id, coalesce(i.device_id, c.device_id), i.state, c.rejected_code,
                ARRAY(SELECT l.state FROM command_log l
                      WHERE l.tenant_id = c.tenant_id AND l.command_id = c.command_id
                        AND l.device_id IS NOT DISTINCT FROM coalesce(i.device_id, c.device_id)
                        AND l.state = ANY($2) ORDER BY l.id)
         FROM commands c
         LEFT JOIN command_inbox i ON i.tenant_id = c.tenant_id AND i.command_id = c.command_id
         WHERE c.tenant_id = $1",
    )
    .bind(tenant)
    .bind(&finals)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(command_id, device, inbox_state, rejected_code, final_log_states)| CommandRecord {
            command_id,
            device_id: device.unwrap_or_default(),
            inbox_state,
            rejected_code,
            final_log_states,
        })
        .collect())
}
