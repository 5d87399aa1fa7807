//! Disconnecting revoked credentials. `tillsync devices revoke` only writes Postgres; the owner
//! of partition 0 finds revoked keys not yet disconnected and asks the NATS server that
//! admitted each one's last connection to close it (`$SYS.REQ.SERVER.<id>.KICK`, a system
//! account request). The client reconnects, the callout refuses it: revoked within seconds.
//! Without a system account connection, the user JWT's expiry (`--auth-ttl-s`) is the bound.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;

use crate::{metrics, Ctx};

const EVERY: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<Ctx>) {
    let system = match &ctx.config.nats_system_creds {
        Some(creds) => {
            let name = format!("{}/system", ctx.config.instance_id());
            match crate::nats::connect(&ctx.config.nats_url, Some(creds), &ctx.config.nats_tls, &name).await {
                Ok(c) => Some(c),
                Err(error) => {
                    tracing::error!(%error, "System account connection failed; revoked devices stay connected until their JWT expires.");
                    None
                }
            }
        }
        None => None,
    };
    crate::partitions::duty::every(&ctx, EVERY, "Revocation disconnects", || step(&ctx, system.as_ref())).await;
    if let Some(c) = system {
        let _ = c.drain().await;
    }
}

async fn step(ctx: &Ctx, system: Option<&async_nats::Client>) -> Result<(), sqlx::Error> {
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credentials WHERE revoked_at IS NOT NULL AND kicked_at IS NULL AND last_connect_at IS NOT NULL",
    )
    .fetch_one(&ctx.pool)
    .await?;
    metrics::revocations_pending(pending);
    let Some(system) = system else { return Ok(()) };
    let rows = sqlx::query(
        "SELECT public_key, last_server_id, last_client_id FROM credentials
         WHERE revoked_at IS NOT NULL AND kicked_at IS NULL ORDER BY revoked_at LIMIT 100",
    )
    .fetch_all(&ctx.pool)
    .await?;
    for row in rows {
        let key: String = row.get("public_key");
        let server: Option<String> = row.get("last_server_id");
        let client: Option<i64> = row.get("last_client_id");
        let result = match (server, client) {
            (Some(server), Some(cid)) => kick(system, &server, cid).await,
            _ => "not_connected",
        };
        metrics::revocation_kick(result);
        if result == "failed" {
            continue;
        }
        tracing::info!(key, result, "Revoked credential disconnected.");
        sqlx::query("UPDATE credentials SET kicked_at = now() WHERE public_key = $1")
            .bind(&key)
            .execute(&ctx.pool)
            .await?;
    }
    Ok(())
}

/// Asks one server to close one client; "not_connected" when it no longer has it.
async fn kick(system: &async_nats::Client, server: &str, cid: i64) -> &'static str {
    let body = serde_json::json!({ "cid": cid }).to_string();
    let subject = format!("$SYS.REQ.SERVER.{server}.KICK");
    match tokio::time::timeout(Duration::from_secs(2), system.request(subject, body.into())).await {
        Ok(Ok(reply)) => {
            let text = String::from_utf8_lossy(&reply.payload);
            if text.contains("\"error\"") {
                tracing::debug!(%text, "Kick answered with an error (the client is gone).");
                "not_connected"
            } else {
                "kicked"
            }
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => "not_connected",
        Ok(Err(error)) => {
            tracing::warn!(%error, server, "Kick request failed.");
            "failed"
        }
        Err(_) => {
            tracing::warn!(server, "Kick request timed out.");
            "failed"
        }
    }
}
