//! State reread from the object store in the background: one owner for
//! "every [`REFRESH_EVERY`] until shutdown; a warning when failures start,
//! an info line when they end" (tokens, views, groups).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How often cluster-wide state is reread from the store.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// What a refresh says in the log: when its failures start (with the
/// error), and when it works again.
pub struct Messages {
    pub failing: &'static str,
    pub recovered: &'static str,
}

/// Calls `refresh` every [`REFRESH_EVERY`] (the first at once) until
/// `stopping` turns true, which also cuts a refresh short.
pub async fn refresh_every<F, Fut, E>(
    mut stopping: watch::Receiver<bool>,
    messages: Messages,
    mut refresh: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut failing = false;
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let refreshed = tokio::select! {
            refreshed = refresh() => refreshed,
            _ = stopping.wait_for(|s| *s) => return,
        };
        match refreshed {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("{}", messages.recovered);
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "{}", messages.failing);
            }
            Err(_) => {}
        }
    }
}
