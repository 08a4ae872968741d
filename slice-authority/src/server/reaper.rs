//! Reclaims expired slices (revoking their tickets and freeing their nodes'
//! resources) and prunes nonces and revocations nobody needs any more.

use std::time::Duration;

use tokio::sync::watch;

use super::slices::delete_slice;
use super::store::{self, SliceRow};
use super::{AppState, Inner};

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_millis(state.config.reaper_interval_ms.max(10));
    loop {
        if let Err(e) = reap_once(&state).await {
            tracing::warn!(
                "reclaiming expired slices failed (will retry): {}",
                e.message
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass: every slice whose lease ended is deleted like `slicenet slice delete` would.
pub async fn reap_once(state: &Inner) -> Result<usize, super::ApiError> {
    let now = crate::auth::now_secs();
    let expired: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM slices WHERE lease_expires_at <= ? ORDER BY lease_expires_at LIMIT 100",
    )
    .bind(now)
    .fetch_all(&state.db)
    .await?;
    let mut reclaimed = 0;
    for name in expired {
        let mut w = state.write().await?;
        // Re-read under the write lock: a renewal may have won the race.
        let row: SliceRow = match store::slice_by_name(&mut w.tx, &name).await {
            Ok(r) if r.lease_expires_at <= now => r,
            _ => continue,
        };
        let n = delete_slice(state, &mut w, &row, "authority", "slice.expire").await?;
        w.commit(state).await?;
        tracing::info!("slice {name} expired: {n} slivers reclaimed");
        reclaimed += 1;
    }
    state.prune_nonces(now);
    let mut w = state.write().await?;
    sqlx::query("DELETE FROM request_nonces WHERE expires_at < ?")
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    // A revocation is needed only until the ticket it replaces would have expired anyway.
    sqlx::query("DELETE FROM tickets WHERE revoked = 1 AND expires_at < ?")
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
    w.commit(state).await?;
    Ok(reclaimed)
}
