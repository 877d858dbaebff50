//! Roles are whole attributes (review finding L2): `role:auditor-trainee`
//! is another role than `role:auditor`, on every backend.

mod common;

use asclepios_client::ClientError;
use common::*;

async fn a_prefix_is_not_the_role(postgres: bool) {
    let d = deploy(postgres).await;
    add_identity(&d, "trainee-tom", "auditor", &["role:auditor-trainee"]).await;
    let mut trainee = client(&d, "trainee-tom");
    trainee.refresh_key().await.unwrap();
    match trainee.audit_events().await {
        Err(ClientError::Refused { status: 403, .. }) => {}
        other => panic!("role:auditor-trainee read the audit log: {other:?}"),
    }
    match trainee.emergency_reviews().await {
        Err(ClientError::Refused { status: 403, .. }) => {}
        other => panic!("role:auditor-trainee read the review queue: {other:?}"),
    }
    let mut auditor = client(&d, "auditor-ann");
    auditor.refresh_key().await.unwrap();
    auditor.audit_events().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_prefix_grants_nothing_on_sqlite() {
    a_prefix_is_not_the_role(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_prefix_grants_nothing_on_postgres() {
    a_prefix_is_not_the_role(true).await;
}
