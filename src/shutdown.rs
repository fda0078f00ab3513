//! Stopping on request: how the service's loops wait between rounds
//! without holding up a stop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sleeps for `duration`, or less when `stop` is cancelled meanwhile.
/// True when the sleep ran its course, false when it is time to stop (a
/// stop already asked for wins over a sleep that is also over).
pub async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_runs_its_course_unless_a_stop_comes_first() {
        let stop = CancellationToken::new();
        assert!(sleep_or_stop(Duration::from_millis(10), &stop).await);

        let later = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.cancel();
        });
        let started = std::time::Instant::now();
        assert!(!sleep_or_stop(Duration::from_secs(3600), &stop).await);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "woke at the stop"
        );

        assert!(!sleep_or_stop(Duration::ZERO, &stop).await, "a stop wins");
    }
}
