//! Test approvers: "alice" signs with the first public test key of
//! [`tillsync_schemas::approval::TEST_APPROVERS`], "bob" with the second. Tests register both
//! for every tenant they add, so a command approved by them is delivered like a real one.

use tillsync_schemas::approval::{self, Decision};
use tillsync_schemas::{Approval, CommandEnvelope};

/// The registered test approvers' ids.
pub const APPROVERS: [&str; 2] = ["alice", "bob"];

/// The test key `name` signs with: bob's is the second, anyone else's the first (so a name
/// nobody registered still carries a well-formed signature).
pub fn approver_key(name: &str) -> nkeys::KeyPair {
    approval::test_key(usize::from(name == APPROVERS[1]))
}

/// Registers alice and bob as approvers of `tenant`.
pub async fn register_test_approvers(pool: &sqlx::PgPool, tenant: &str) {
    for name in APPROVERS {
        sqlx::query(
            "INSERT INTO approvers (tenant_id, approver_id, public_key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(name)
        .bind(approver_key(name).public_key())
        .execute(pool)
        .await
        .unwrap();
    }
}

/// `name`'s signed approval of `cmd`.
pub fn approval_by(cmd: &CommandEnvelope, name: &str) -> Approval {
    Approval {
        approver: name.into(),
        role: "manager".into(),
        approved_at_ms: cmd.issued_at_ms,
        signature: Some(approval::sign(&approver_key(name), cmd, name, Decision::Approve)),
    }
}

/// Replaces `cmd`'s approvals with signed ones by `names`.
pub fn approve(cmd: &mut CommandEnvelope, names: &[&str]) {
    cmd.approvals = names.iter().map(|n| approval_by(cmd, n)).collect();
}
