//! Every Lua script flit-cache runs, each loaded once from `lua/<name>.lua`,
//! and the one convention for their flags: the files carry none; the line
//! Redis reads first (`#!lua flags=...`) is written here, beside the
//! script's name, so what a script may do at maxmemory or on a replica is
//! read in one place. Each file's header says what it does, its KEYS and
//! ARGV, and what it returns.
//!
//! The upload scripts that write for a run holding the upload lock are
//! `fenced`: before their body they check the lock's token (their last KEY
//! and last ARGV) and answer `FENCED`, changing nothing, when the run lost it.

use std::sync::LazyLock;

use redis::Script;

/// A script from `lua/<file>` behind the flags line `#!lua<flags>`.
macro_rules! script {
    ($flags:literal, $file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                "#!lua",
                $flags,
                "\n",
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

/// A script from `lua/<file>` that first checks the upload lock (see the
/// module doc). allow-oom: the uploader must work when Redis is full, since
/// settling is what frees memory.
macro_rules! fenced {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                "#!lua flags=allow-oom\n",
                "if redis.call('GET', KEYS[#KEYS]) ~= ARGV[#ARGV] then\n",
                "  return redis.error_reply('FENCED this run no longer holds ' .. KEYS[#KEYS] .. '; nothing was changed')\n",
                "end\n",
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

type Lazy = LazyLock<Script>;

// Ingest. The commit is built twice: without allow-oom Redis refuses it at
// maxmemory before it runs (the worker then waits for an upload); with it,
// for the one batch past the limit that a stream full of entries needs.
pub static COMMIT: Lazy = script!("", "commit_batch.lua");
pub static COMMIT_PAST_THE_LIMIT: Lazy = script!(" flags=allow-oom", "commit_batch.lua");
pub static CREATE_GROUP: Lazy = script!(" flags=allow-oom", "create_group.lua");
pub static TRIM_STREAM: Lazy = script!(" flags=allow-oom", "trim_stream.lua");
pub static LAYOUT_CLAIM: Lazy = script!(" flags=allow-oom", "layout_claim.lua");

// Not allow-oom: at maxmemory a redrive is refused before it moves anything
// (its XADD would grow memory), and the operator retries after an upload.
pub static REDRIVE: Lazy = script!("", "redrive.lua");

// The upload lock and the load-job budget.
pub static LOCK_ACQUIRE: Lazy = script!(" flags=allow-oom", "lock_acquire.lua");
pub static LOCK_RENEW: Lazy = script!(" flags=allow-oom", "lock_renew.lua");
pub static LOCK_RELEASE: Lazy = script!(" flags=allow-oom", "lock_release.lua");
pub static BUDGET_TAKE: Lazy = script!(" flags=allow-oom", "budget_take.lua");
pub static RENEW_TTL: Lazy = script!(" flags=allow-oom", "renew_ttl.lua");

// The upload protocol (upload_queue.rs), all fenced.
pub static TAKE_PAGE: Lazy = fenced!("take_page.lua");
pub static START_IN_FLIGHT: Lazy = fenced!("start_in_flight.lua");
pub static SAVE_IN_FLIGHT: Lazy = fenced!("save_in_flight.lua");
pub static SAVE_PARKED: Lazy = fenced!("save_parked.lua");
pub static SETTLE_SLICE: Lazy = fenced!("settle_slice.lua");
pub static SETTLE_DONE: Lazy = fenced!("settle_done.lua");
pub static SWEEP_UPLOADED: Lazy = fenced!("sweep_uploaded.lua");
pub static PARK: Lazy = fenced!("park.lua");
pub static RELEASE_CLAIMS: Lazy = fenced!("release_claims.lua");
pub static TAKE_OVER: Lazy = fenced!("take_over.lua");

#[cfg(test)]
mod tests {

    /// Every file in lua/ is loaded here, so none is forgotten or run with
    /// flags of its own.
    #[test]
    fn every_lua_file_is_declared_once_and_carries_no_flags_line() {
        let source = include_str!("scripts.rs");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/lua");
        for entry in std::fs::read_dir(&dir).expect("lua dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            let quoted = format!("\"{name}\")");
            assert!(
                source.contains(&quoted),
                "{name} is not declared in scripts.rs"
            );
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(!text.starts_with("#!"), "{name} carries its own flags line");
        }
    }
}
