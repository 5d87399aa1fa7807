//! Disconnecting revoked credentials. `tillsync devices revoke` only writes Postgres; the owner
//! of partition 0 finds revoked keys not yet disconnected and asks the NATS server that
//! admitted each of their connections (`credential_connections`, every node) to close it
//! (`$SYS.REQ.SERVER.<id>.KICK`, a system account request). The client reconnects, the callout refuses it: revoked within seconds.
//! Without a system account connection, the user JWT's expiry (`--auth-ttl-s`) is the bound.

use std::sync::Arc;
use std::time::Duration;

use crate::{metrics, Ctx};

pub const EVERY: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<Ctx>, job: crate::tasks::Job) {
    let system = match &ctx.config.nats_system_creds {
        Some(creds) => {
            let name = format!("{}/system", ctx.config.instance_id());
            match crate::nats::connect(&ctx.config.nats_url, Some(creds), &ctx.config.nats_tls, &name).await {
                Ok(c) => Some(c),
                Err(error) => {
                    let error = crate::error::Chain(&error);
                    tracing::error!(%error, "System account connection failed; revoked devices stay connected until their JWT expires.");
                    None
                }
            }
        }
        None => None,
    };
    job.run(&ctx, || step(&ctx, system.as_ref())).await;
    if let Some(c) = system {
        let _ = c.drain().await;
    }
}

async fn step(ctx: &Ctx, system: Option<&async_nats::Client>) -> Result<(), sqlx::Error> {
    // A connection cannot outlive its user JWT: older records name nothing that is still open.
    let window = ctx.config.auth_ttl_s as f64 + 60.0;
    sqlx::query("DELETE FROM credential_connections WHERE at < now() - make_interval(secs => $1)")
        .bind(window)
        .execute(&ctx.pool)
        .await?;
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credentials WHERE revoked_at IS NOT NULL AND kicked_at IS NULL AND last_connect_at IS NOT NULL",
    )
    .fetch_one(&ctx.pool)
    .await?;
    metrics::revocations_pending(pending);
    let Some(system) = system else { return Ok(()) };
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT public_key FROM credentials WHERE revoked_at IS NOT NULL AND kicked_at IS NULL ORDER BY revoked_at LIMIT 100",
    )
    .fetch_all(&ctx.pool)
    .await?;
    for key in keys {
        let connections: Vec<(String, i64)> =
            sqlx::query_as("SELECT server_id, client_id FROM credential_connections WHERE public_key = $1")
                .bind(&key)
                .fetch_all(&ctx.pool)
                .await?;
        // Every connection the key was admitted with, on whichever node: a stolen identity may
        // be in use twice.
        let (mut closed, mut failed) = (0, false);
        for (server, cid) in &connections {
            let result = kick(system, server, *cid).await;
            metrics::revocation_kick(result);
            match result {
                "kicked" => closed += 1,
                "failed" => failed = true,
                _ => {}
            }
        }
        if connections.is_empty() {
            metrics::revocation_kick("not_connected");
        }
        if failed {
            continue;
        }
        tracing::info!(key, closed, "Revoked credential disconnected.");
        sqlx::query("UPDATE credentials SET kicked_at = now(), kicked_connections = $2 WHERE public_key = $1;")
            .bind(&key)
            .bind(closed)
            .execute(&ctx.pool)
            .await?;
        sqlx::query("DELETE FROM credential_connections WHERE public_key = $1").bind(&key).execute(&ctx.pool).await?;
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
