//! NATS authorization for a test: the keys `tillsync auth init` writes, in a temp dir, and the
//! steps a real deployment takes (a device's activation code, a portal credential).

use std::path::PathBuf;

use tempfile::TempDir;
use tillsync_broker::admin::auth::setup;
use tillsync_schemas::DeviceAddr;

pub struct AuthSetup {
    dir: TempDir,
}

impl Default for AuthSetup {
    fn default() -> Self {
        AuthSetup::new()
    }
}

impl AuthSetup {
    pub fn new() -> AuthSetup {
        let dir = TempDir::new().unwrap();
        setup::generate(&dir.path().join("auth")).expect("auth keys");
        AuthSetup { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join("auth").join(name)
    }

    /// The authorization part of a nats-server config.
    pub fn server_conf(&self) -> String {
        std::fs::read_to_string(self.file(setup::SERVER_CONF)).unwrap()
    }

    pub fn operator_creds(&self) -> PathBuf {
        self.file(setup::OPERATOR)
    }

    /// Points a broker config at the broker's keys: its own user, the callout and the system
    /// account.
    pub fn broker(&self, c: &mut tillsync_broker::config::Config) {
        c.nats_creds = Some(self.file(setup::BROKER));
        c.auth_callout_creds = Some(self.file(setup::CALLOUT));
        c.auth_issuer_seed = Some(self.file(setup::ISSUER));
        c.nats_system_creds = Some(self.file(setup::SYSTEM));
    }

    /// A directory for other files of the test (identity files, portal seeds).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// Issues an activation code for `addr` the way `tillsync devices add` does.
pub async fn activation_code(pool: &sqlx::PgPool, addr: &DeviceAddr, hours: i32) -> String {
    code_for(pool, addr, "activate", hours).await
}

pub async fn code_for(pool: &sqlx::PgPool, addr: &DeviceAddr, purpose: &str, hours: i32) -> String {
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&addr.tenant_id)
        .execute(pool)
        .await
        .unwrap();
    crate::register_test_approvers(pool, &addr.tenant_id).await;
    let code = tillsync_broker::admin::auth::new_code();
    let mut tx = pool.begin().await.unwrap();
    tillsync_broker::admin::auth::records::insert_code(&mut tx, &code, addr, purpose, "test", hours).await.unwrap();
    tx.commit().await.unwrap();
    code
}
