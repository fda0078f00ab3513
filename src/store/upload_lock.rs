//! `UploadLock`: one upload of a kind at a time across every process on
//! this Redis. The lock is a key in the kind's database holding a random
//! token with an expiry, renewed while the run lasts and released only by
//! its holder, so a crashed run frees it by itself and can never release a
//! lock someone else took since. It is also a fence: every script that
//! writes for the upload gets its `Fence` and checks the token in the same
//! step, so a run that lost the lock (paused past its expiry) writes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use super::scripts;
use crate::keys::{EventKind, upload_lock_key};
use crate::shutdown::sleep_or_stop;

pub struct UploadLock {
    conn: MultiplexedConnection,
    key: String,
    token: String,
    lost: Arc<AtomicBool>,
    stop_renewing: CancellationToken,
}

/// What a script needs to check that the run still holds its kind's lock:
/// the lock's key (last of the script's KEYS) and the run's token (last of
/// its ARGV). The scripts answer `FENCED` otherwise, having changed nothing.
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: String,
    pub token: String,
}

impl Fence {
    /// A fence no lock matches: for runs that must not write (dry runs).
    pub fn closed(kind: EventKind) -> Self {
        Fence {
            key: upload_lock_key(kind),
            token: String::new(),
        }
    }
}

/// Who holds the lock, when it is busy.
#[derive(Debug, Clone)]
pub struct Busy {
    pub holder: String,
    pub expires_in_ms: i64,
}

impl UploadLock {
    /// Takes `kind`'s lock (`conn` is the kind's database), or says who
    /// holds it.
    pub async fn acquire(
        mut conn: MultiplexedConnection,
        kind: EventKind,
        ttl: Duration,
    ) -> anyhow::Result<Result<Self, Busy>> {
        let key = upload_lock_key(kind);
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let token = format!(
            "{host}/pid {}/{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let taken: Option<String> = scripts::LOCK_ACQUIRE
            .key(&key)
            .arg(&token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if taken.is_none() {
            let (holder, expires_in_ms): (Option<String>, i64) = redis::pipe()
                .cmd("GET")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            return Ok(Err(Busy {
                holder: holder.unwrap_or_default(),
                expires_in_ms,
            }));
        }
        let lock = UploadLock {
            conn,
            key,
            token,
            lost: Arc::new(AtomicBool::new(false)),
            stop_renewing: CancellationToken::new(),
        };
        lock.keep_renewed(ttl);
        Ok(Ok(lock))
    }

    /// What the run's scripts check.
    pub fn fence(&self) -> Fence {
        Fence {
            key: self.key.clone(),
            token: self.token.clone(),
        }
    }

    /// True once renewing failed: the run must stop taking new batches.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub async fn release(mut self) -> anyhow::Result<()> {
        self.stop_renewing.cancel();
        let _: i64 = scripts::LOCK_RELEASE
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(())
    }

    fn keep_renewed(&self, ttl: Duration) {
        let mut conn = self.conn.clone();
        let key = self.key.clone();
        let token = self.token.clone();
        let lost = self.lost.clone();
        let stop = self.stop_renewing.clone();
        tokio::spawn(async move {
            loop {
                if !sleep_or_stop(ttl / 3, &stop).await {
                    return;
                }
                let renewed: redis::RedisResult<i64> = scripts::LOCK_RENEW
                    .key(&key)
                    .arg(&token)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::error!(
                        ?renewed,
                        "lost the upload lock; stopping after the batch in hand"
                    );
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        });
    }
}

impl Drop for UploadLock {
    fn drop(&mut self) {
        self.stop_renewing.cancel();
    }
}
