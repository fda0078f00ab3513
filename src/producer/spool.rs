//! The durable local spool: events that could not reach Redis are appended,
//! fsync'd, to an NDJSON file, and handed back later for replay.
//!
//! Files in the spool folder:
//! - `events.ndjson`: where appends go;
//! - `replay-*.ndjson`: files taken for replay (renamed from `events.ndjson`),
//!   deleted once every line in them reached Redis;
//! - `unreadable.ndjson`: lines that could not be parsed (a torn write after
//!   a crash), kept for a person to look at, never dropped;
//! - `progress-replay-*.ndjson`: how many lines of a replay file already
//!   reached Redis, so a replay that was interrupted resumes after them
//!   instead of sending them again;
//! - `.lock`: serialises appends with the rename that starts a replay, across
//!   processes, so a line can never be written into a file already read.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::keys::EventKind;

const ACTIVE: &str = "events.ndjson";
const REPLAY_PREFIX: &str = "replay-";
const UNREADABLE: &str = "unreadable.ndjson";
const PROGRESS_PREFIX: &str = "progress-";
const LOCK: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir} is full ({used} bytes, limit {limit}); events were not accepted")]
    Full { dir: String, used: u64, limit: u64 },
    #[error("cannot write the spool in {dir}: {source}")]
    Io { dir: String, source: io::Error },
}

/// The spool line format this binary writes and replays. Lines written
/// before the version was added carry none and are read as 1; a line of a
/// newer format stops the replay with an error, its file kept, rather than
/// being misread.
pub const SPOOL_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct SpoolLine<'a> {
    #[serde(default = "format_one")]
    v: u32,
    kind: &'a str,
    /// The event exactly as it would have been sent.
    data: std::borrow::Cow<'a, str>,
}

fn format_one() -> u32 {
    1
}

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
}

/// A spool file taken for replay, locked against other replayers while held.
#[derive(Debug)]
pub struct ReplayFile {
    pub path: PathBuf,
    _lock: File,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Spool {
            dir: dir.into(),
            max_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends events durably: when this returns Ok they are on disk.
    pub fn append(&self, kind: EventKind, payloads: &[String]) -> Result<(), SpoolError> {
        let mut buffer = Vec::with_capacity(payloads.iter().map(|p| p.len() + 40).sum());
        for payload in payloads {
            let line = SpoolLine {
                v: SPOOL_FORMAT,
                kind: kind.name(),
                data: payload.as_str().into(),
            };
            serde_json::to_writer(&mut buffer, &line).map_err(|e| self.io_error(e.into()))?;
            buffer.push(b'\n');
        }
        let _guard = self.lock().map_err(|e| self.io_error(e))?;
        let used = self.bytes();
        if used + buffer.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.display().to_string(),
                used,
                limit: self.max_bytes,
            });
        }
        let write = || -> io::Result<()> {
            let mut file = crate::files::private_file()
                .create(true)
                .read(true)
                .append(true)
                .open(self.dir.join(ACTIVE))?;
            self.repair_tail(&mut file)?;
            file.write_all(&buffer)?;
            file.sync_data()
        };
        write().map_err(|e| self.io_error(e))
    }

    /// An append cut short (disk full, a kill mid-write) leaves a fragment
    /// without its newline; the next append would be glued to it and lost
    /// with it. The fragment is moved to `unreadable.ndjson` and cut off
    /// first. Its caller got an error, never an acknowledgement.
    fn repair_tail(&self, file: &mut File) -> io::Result<()> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(());
        }
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] == b'\n' {
            return Ok(());
        }
        // Find the last newline, reading backwards in blocks.
        let mut end = len;
        let mut cut = 0;
        let mut block = vec![0u8; 64 * 1024];
        while end > 0 {
            let start = end.saturating_sub(block.len() as u64);
            let part = &mut block[..(end - start) as usize];
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(part)?;
            if let Some(at) = part.iter().rposition(|b| *b == b'\n') {
                cut = start + at as u64 + 1;
                break;
            }
            end = start;
        }
        let mut fragment = Vec::with_capacity((len - cut) as usize);
        file.seek(SeekFrom::Start(cut))?;
        file.take(len - cut).read_to_end(&mut fragment)?;
        let mut out = crate::files::private_file()
            .create(true)
            .append(true)
            .open(self.dir.join(UNREADABLE))?;
        out.write_all(&fragment)?;
        out.write_all(b"\n")?;
        out.sync_data()?;
        file.set_len(cut)?;
        file.sync_data()?;
        tracing::error!(bytes = fragment.len(), dir = %self.dir.display(),
            "the spool ended in a torn line (a failed append); moved it to unreadable.ndjson");
        Ok(())
    }

    /// Takes every spooled file for replay: the active file is renamed, so new
    /// appends start a fresh one. Files another replayer holds are skipped.
    pub(crate) fn take_for_replay(&self) -> io::Result<Vec<ReplayFile>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        {
            let _guard = self.lock()?;
            let active = self.dir.join(ACTIVE);
            if active.metadata().map(|m| m.len() > 0).unwrap_or(false) {
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let name = format!("{REPLAY_PREFIX}{stamp:032}-{}.ndjson", std::process::id());
                fs::rename(&active, self.dir.join(name))?;
                sync_dir(&self.dir)?;
            }
        }
        let mut paths: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(REPLAY_PREFIX) && n.ends_with(".ndjson"))
            })
            .collect();
        paths.sort();
        let mut taken = Vec::new();
        for path in paths {
            let file = File::open(&path)?;
            match file.try_lock() {
                Ok(()) => taken.push(ReplayFile { path, _lock: file }),
                Err(fs::TryLockError::WouldBlock) => continue,
                Err(fs::TryLockError::Error(err)) => return Err(err),
            }
        }
        Ok(taken)
    }

    /// Reads a replay file line by line, handing events to `each` in order
    /// with the number of their line (blank lines not counted), from the
    /// first line after those an earlier, interrupted replay had sent.
    /// Unparseable lines are moved to `unreadable.ndjson` and counted.
    pub(crate) fn read_events(
        &self,
        file: &ReplayFile,
        mut each: impl FnMut(u64, EventKind, String) -> io::Result<()>,
    ) -> io::Result<u64> {
        let reader = BufReader::new(File::open(&file.path)?);
        let done = self.progress(file);
        let mut unreadable = Vec::new();
        let mut number = 0u64;
        for line in reader.split(b'\n') {
            let line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            number += 1;
            if number <= done {
                continue;
            }
            match serde_json::from_slice::<SpoolLine>(&line) {
                Ok(parsed) if parsed.v > SPOOL_FORMAT => {
                    return Err(io::Error::other(format!(
                        "{} line {number} is spool format {}, this flit-cache reads up to \
                         {SPOOL_FORMAT}; replay it with the newer flit-cache (the file is kept)",
                        file.path.display(),
                        parsed.v
                    )));
                }
                Ok(parsed) => match EventKind::from_name(parsed.kind) {
                    Some(kind) => each(number, kind, parsed.data.into_owned())?,
                    None => unreadable.push(line),
                },
                Err(_) => unreadable.push(line),
            }
        }
        if !unreadable.is_empty() {
            let mut out = crate::files::private_file()
                .create(true)
                .append(true)
                .open(self.dir.join(UNREADABLE))?;
            for line in &unreadable {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
            out.sync_data()?;
        }
        Ok(unreadable.len() as u64)
    }

    /// Deletes a replay file once all its events reached Redis.
    pub(crate) fn finish(&self, file: ReplayFile) -> io::Result<()> {
        fs::remove_file(&file.path)?;
        match fs::remove_file(self.progress_path(&file)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        sync_dir(&self.dir)
    }

    /// Notes that the lines of `file` up to `line` have reached Redis; a
    /// replay that is interrupted later resumes after them. Written to a
    /// temporary name, synced and renamed, so it is whole or absent.
    pub(crate) fn record_progress(&self, file: &ReplayFile, line: u64) -> io::Result<()> {
        let target = self.progress_path(file);
        let temporary = target.with_extension("tmp");
        let mut out = crate::files::private_file()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&temporary)?;
        out.write_all(line.to_string().as_bytes())?;
        out.sync_all()?;
        fs::rename(&temporary, &target)?;
        sync_dir(&self.dir)
    }

    /// Lines of `file` an earlier replay had sent (0 when none, or unreadable).
    fn progress(&self, file: &ReplayFile) -> u64 {
        fs::read_to_string(self.progress_path(file))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    fn progress_path(&self, file: &ReplayFile) -> PathBuf {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.dir.join(format!("{PROGRESS_PREFIX}{name}"))
    }

    /// Bytes waiting in the spool (active and replay files).
    pub fn bytes(&self) -> u64 {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n == ACTIVE || n.starts_with(REPLAY_PREFIX))
            })
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    fn lock(&self) -> io::Result<File> {
        crate::files::private_dir(&self.dir)?;
        let file = crate::files::private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK))?;
        file.lock()?;
        // Unlocked when the file is dropped.
        Ok(file)
    }

    fn io_error(&self, source: io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.display().to_string(),
            source,
        }
    }
}

/// Makes a rename or delete in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::PermissionsExt;

    fn events(spool: &Spool) -> (Vec<(EventKind, String)>, u64) {
        let mut seen = Vec::new();
        let mut unreadable = 0;
        for file in spool.take_for_replay().expect("take") {
            unreadable += spool
                .read_events(&file, |_, kind, data| {
                    seen.push((kind, data));
                    Ok(())
                })
                .expect("read");
            spool.finish(file).expect("finish");
        }
        (seen, unreadable)
    }

    #[test]
    fn appended_events_come_back_in_order_and_the_spool_empties() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path().join("spool"), 1 << 20);
        assert!(spool.is_empty());
        spool
            .append(
                EventKind::Transaction,
                &["{\"a\":\"x\\ny\"}".into(), "{}".into()],
            )
            .expect("append");
        spool
            .append(EventKind::Prediction, &["{\"p\":1}".into()])
            .expect("append");
        assert!(!spool.is_empty());
        let (seen, unreadable) = events(&spool);
        assert_eq!(unreadable, 0);
        assert_eq!(
            seen,
            vec![
                (EventKind::Transaction, "{\"a\":\"x\\ny\"}".to_owned()),
                (EventKind::Transaction, "{}".to_owned()),
                (EventKind::Prediction, "{\"p\":1}".to_owned()),
            ]
        );
        assert!(spool.is_empty());
        assert!(events(&spool).0.is_empty(), "nothing twice");
    }

    #[test]
    fn appends_during_a_replay_go_to_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path(), 1 << 20);
        spool
            .append(EventKind::Transaction, &["{\"n\":1}".into()])
            .expect("append");
        let taken = spool.take_for_replay().expect("take");
        assert_eq!(taken.len(), 1);
        spool
            .append(EventKind::Transaction, &["{\"n\":2}".into()])
            .expect("append");
        assert!(
            spool.take_for_replay().expect("second take").len() == 1,
            "held file is skipped, new one taken"
        );
        drop(taken);
        let (seen, _) = events(&spool);
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn a_torn_line_is_kept_aside_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path(), 1 << 20);
        spool
            .append(EventKind::Prediction, &["{\"ok\":1}".into()])
            .expect("append");
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(ACTIVE))
            .expect("open");
        file.write_all(b"{\"kind\":\"predictions\",\"da")
            .expect("torn write");
        let (seen, unreadable) = events(&spool);
        assert_eq!(seen.len(), 1);
        assert_eq!(unreadable, 1);
        let kept = fs::read_to_string(dir.path().join(UNREADABLE)).expect("kept");
        assert!(kept.contains("\"da"));
    }

    #[test]
    fn lines_carry_their_format_and_a_newer_one_stops_the_replay_with_its_file_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path(), 1 << 20);
        spool
            .append(EventKind::Prediction, &["{\"n\":1}".into()])
            .expect("append");
        let written = fs::read_to_string(dir.path().join(ACTIVE)).expect("spool");
        assert!(written.starts_with("{\"v\":2,"), "{written}");
        // A line without a version (written before it existed) is format 1.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(ACTIVE))
            .expect("open");
        file.write_all(b"{\"kind\":\"predictions\",\"data\":\"{}\"}\n")
            .expect("old line");
        file.write_all(b"{\"v\":99,\"kind\":\"predictions\",\"data\":\"{}\"}\n")
            .expect("newer line");
        let files = spool.take_for_replay().expect("take");
        let mut seen = Vec::new();
        let err = spool
            .read_events(&files[0], |_, _, data| {
                seen.push(data);
                Ok(())
            })
            .expect_err("a newer format is refused");
        assert!(err.to_string().contains("spool format 99"), "{err}");
        assert_eq!(seen, ["{\"n\":1}", "{}"], "the lines before it were read");
        assert!(
            files[0].path.exists(),
            "the file is kept for a newer binary"
        );
        assert!(!dir.path().join(UNREADABLE).exists(), "nothing set aside");
    }

    #[test]
    fn an_append_after_a_torn_one_is_not_lost_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path(), 1 << 20);
        spool
            .append(EventKind::Prediction, &["{\"n\":1}".into()])
            .expect("append");
        // An append that died half way: one whole line, then a fragment.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(ACTIVE))
            .expect("open");
        file.write_all(b"{\"kind\":\"predictions\",\"data\":\"{}\"}\n{\"kind\":\"pred")
            .expect("torn write");
        spool
            .append(EventKind::Prediction, &["{\"n\":2}".into()])
            .expect("append after the tear");
        let (seen, unreadable) = events(&spool);
        let data: Vec<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(
            data,
            ["{\"n\":1}", "{}", "{\"n\":2}"],
            "the acknowledged event survives"
        );
        assert_eq!(
            unreadable, 0,
            "the fragment was set aside before the append"
        );
        let kept = fs::read_to_string(dir.path().join(UNREADABLE)).expect("kept");
        assert_eq!(kept, "{\"kind\":\"pred\n");
    }

    #[test]
    fn a_file_that_is_only_a_fragment_is_set_aside_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path(), 1 << 20);
        fs::write(dir.path().join(ACTIVE), b"{\"kind\":").expect("fragment");
        spool
            .append(EventKind::Transaction, &["{\"t\":1}".into()])
            .expect("append");
        let (seen, unreadable) = events(&spool);
        assert_eq!(seen.len(), 1);
        assert_eq!(unreadable, 0);
    }

    #[test]
    fn an_interrupted_replay_resumes_after_what_it_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path(), 1 << 20);
        let payloads: Vec<String> = (0..5).map(|n| format!("{{\"n\":{n}}}")).collect();
        spool
            .append(EventKind::Prediction, &payloads)
            .expect("append");
        let file = spool.take_for_replay().expect("take").remove(0);
        // The first replay got three lines to Redis, then stopped.
        spool.record_progress(&file, 3).expect("progress");
        drop(file);
        let (seen, _) = events(&spool);
        let data: Vec<&str> = seen.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(data, ["{\"n\":3}", "{\"n\":4}"], "only what was not sent");
        assert!(spool.is_empty());
        let left: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(PROGRESS_PREFIX))
            .collect();
        assert!(left.is_empty(), "progress goes with its file: {left:?}");
    }

    #[test]
    fn a_full_spool_refuses_loudly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(dir.path(), 64);
        let big = "x".repeat(100);
        let err = spool
            .append(EventKind::Transaction, &[big])
            .expect_err("over the limit");
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    }

    #[test]
    fn the_spool_is_readable_by_its_owner_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(root.path().join("spool"), 1 << 20);
        spool
            .append(
                EventKind::Prediction,
                &["{\"prediction_id\":\"p\"}".to_owned()],
            )
            .expect("append");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(spool.dir()), 0o700);
        assert_eq!(mode(&spool.dir().join(ACTIVE)), 0o600);
        let taken = spool.take_for_replay().expect("take");
        spool.record_progress(&taken[0], 1).expect("progress");
        assert_eq!(mode(&spool.progress_path(&taken[0])), 0o600);
    }
}
