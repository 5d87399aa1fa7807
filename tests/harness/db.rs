use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Executor;

/// A fresh database with tillsync's migrations applied; dropped when the value is.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    name: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("TILLSYNC_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Replaces the database name (path) of a Postgres URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base.rfind('/').filter(|i| base[..*i].ends_with(|c: char| c != '/')).unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = admin_url();
        let name = format!("tillsync_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach Postgres at {admin_url}: {e} (set TILLSYNC_TEST_DATABASE_URL or run ./scripts/test.sh)"
            )
        });
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new().max_connections(5).connect(&url).await.unwrap();
        tillsync_broker::db::migrate(&pool).await.unwrap();
        TestDb { url, pool, name, admin_url }
    }

    /// Another fresh, migrated database of the same server (replay targets).
    pub async fn sibling() -> TestDb {
        TestDb::new().await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside async; a short-lived thread with its own runtime drops the database.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(admin) = PgPoolOptions::new().max_connections(1).connect(&admin_url).await {
                    let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
                    admin.close().await;
                }
            })
        })
        .join();
    }
}
