//! Which tenants exist. Events and commands for an unknown tenant are refused with
//! `unknown_tenant`: no tenant's data lands anywhere it was not provisioned.

use dashmap::DashMap;
use sqlx::PgPool;

pub struct Tenants {
    known: DashMap<String, ()>,
    auto_create: bool,
}

impl Tenants {
    pub fn new(auto_create: bool) -> Self {
        Tenants { known: DashMap::new(), auto_create }
    }

    /// True when the tenant exists (created on the fly only with `TILLSYNC_AUTO_TENANTS`).
    /// Misses are not cached, so a tenant added later is seen at once.
    pub async fn exists(&self, pool: &PgPool, tenant: &str) -> Result<bool, sqlx::Error> {
        if self.known.contains_key(tenant) {
            return Ok(true);
        }
        let found = if self.auto_create {
            sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(tenant)
                .execute(pool)
                .await?;
            true
        } else {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tenants WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_one(pool)
                .await?
                > 0
        };
        if found {
            self.known.insert(tenant.to_string(), ());
        }
        Ok(found)
    }
}
