use sqlx::postgres::{PgPool, PgPoolOptions};
use tillsync_testkit::FreshDb;

/// A fresh database with tillsync's migrations applied ([`FreshDb`]); dropped when the value is.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    _db: FreshDb,
}

fn admin_url() -> String {
    std::env::var("TILLSYNC_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = admin_url();
        let db = FreshDb::create(&admin_url, "tillsync_test").await.unwrap_or_else(|e| {
            panic!("cannot create a database: {e} (set TILLSYNC_TEST_DATABASE_URL or run ./scripts/test.sh)")
        });
        let url = db.url().to_string();
        let pool = PgPoolOptions::new().max_connections(5).connect(&url).await.unwrap();
        tillsync_broker::admin::db::migrate(&pool).await.unwrap();
        TestDb { url, pool, _db: db }
    }

    /// Another fresh, migrated database of the same server (replay targets).
    pub async fn sibling() -> TestDb {
        TestDb::new().await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}
