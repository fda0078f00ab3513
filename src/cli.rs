//! The command line: what each command takes, and what it prints and returns.
//! Commands report one clear line on stderr when they fail; results go to
//! stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::generate::Generator;
use crate::keys::EventKind;
use crate::producer::{Delivery, PIPELINE_CHUNK, Producer};
use crate::startup::{self, Application};
use crate::upload::{self, UploadOptions};
use crate::warehouse::{self, TableSpec, Warehouse};

#[derive(Debug, Parser)]
#[command(
    name = "flit-cache",
    version,
    about = "Redis stream ingest and BigQuery batch upload for BNPL transactions and ML predictions"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: stream workers, spool replay, the upload schedule, /healthz /readyz /metrics. Stops cleanly on SIGTERM/SIGINT (exit 0); exit 1 when one of its tasks ended unexpectedly, 2 could not start.
    Run,
    /// Push NDJSON events (one JSON object per line) onto a stream.
    Push {
        /// Which stream the events go to.
        kind: EventKind,
        /// The file to read; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
    /// Push synthetic, realistic BNPL transactions and matching predictions.
    Generate {
        /// How many transactions (and as many predictions).
        #[arg(long)]
        count: u64,
        /// Which kind to generate.
        #[arg(long, value_enum, default_value_t = GenerateKind::Both)]
        kind: GenerateKind,
        /// Seed for reproducible events (random by default).
        #[arg(long)]
        seed: Option<u64>,
        /// Spread event times over this many days before now.
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Re-push events spooled to disk while Redis was unreachable.
    ReplaySpool,
    /// Create the warehouse datasets and tables from schemas/, partitioned by day (idempotent).
    Init,
    /// One upload run now: queued records into the warehouse. Exit 0 all uploaded, 1 some kept for a later run, 2 could not start.
    BatchUpload {
        /// Read and validate the queues, print what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this kind.
        #[arg(long, value_enum)]
        only: Option<EventKind>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect dead letters, or send those today's rules accept back onto their stream.
    DeadLetter {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Health report of Redis, queues, streams, uploads and lookups against the FLIT_ALERT_* thresholds. Exit 0 healthy, 1 alerts, 2 Redis unreachable.
    Monitor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also read the warehouse tables: rows ingested in the last 24 hours, newest event time.
        #[arg(long)]
        bigquery: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// One line per dead letter, oldest first: id, time, reason code, size, reason.
    List(DeadLetterArgs),
    /// Dead letters in full, with the event data kept.
    Show(DeadLetterArgs),
    /// Re-check with today's rules: an acceptable event goes back onto its stream (and leaves the dead-letter stream in the same step); one still refused for another reason gets a dead letter with the new reason. Exit 1 when some stay dead.
    Redrive(DeadLetterArgs),
}

#[derive(Debug, Args)]
pub struct DeadLetterArgs {
    /// Which kind's dead letters.
    kind: EventKind,
    /// Only dead letters with this reason code (invalid_type, timestamp_out_of_range, ...).
    #[arg(long)]
    reason: Option<String>,
    /// At most this many (default: 100 for list and show, all for redrive).
    #[arg(long)]
    limit: Option<usize>,
    /// Only the dead letter with this entry id.
    #[arg(long)]
    id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerateKind {
    Transactions,
    Predictions,
    Both,
}

pub async fn execute(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => run(settings).await,
        Command::Push { kind, file } => push(settings, kind, file).await,
        Command::Generate {
            count,
            kind,
            seed,
            days,
        } => generate(settings, count, kind, seed, days).await,
        Command::ReplaySpool => replay_spool(settings).await,
        Command::Init => init(settings).await,
        Command::BatchUpload {
            dry_run,
            only,
            json,
        } => {
            batch_upload(
                settings,
                UploadOptions {
                    dry_run,
                    only,
                    stop: None,
                },
                json,
            )
            .await
        }
        Command::Monitor { json, bigquery } => monitor(settings, json, bigquery).await,
        Command::DeadLetter { action } => dead_letter(settings, action).await,
    }
}

async fn dead_letter(settings: Settings, action: DeadLetterAction) -> anyhow::Result<ExitCode> {
    use crate::store::dead_letters::{self as dead_letter, Selection};
    let (args, redrive) = match &action {
        DeadLetterAction::List(args) | DeadLetterAction::Show(args) => (args, false),
        DeadLetterAction::Redrive(args) => (args, true),
    };
    let selection = Selection {
        reason: args.reason.clone(),
        id: args.id.clone(),
        limit: args.limit.unwrap_or(if redrive { usize::MAX } else { 100 }),
    };
    let mut conn = settings
        .redis
        .open(crate::store::Role::Uploader, settings.db_for(args.kind))
        .await?;
    if redrive {
        let outcomes =
            dead_letter::redrive(&mut conn, args.kind, &selection, &settings.door).await?;
        let stays = outcomes.iter().filter(|o| o.stays_dead()).count();
        print_redriven(args, &outcomes)?;
        return Ok(if stays == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let (letters, total) = dead_letter::read(&mut conn, args.kind, &selection).await?;
    let show = matches!(action, DeadLetterAction::Show(_));
    print_letters(args, &letters, total, show)?;
    Ok(ExitCode::SUCCESS)
}

/// What a redrive did, as JSON or as a summary line and the letters that stay.
fn print_redriven(
    args: &DeadLetterArgs,
    outcomes: &[crate::store::dead_letters::Redriven],
) -> anyhow::Result<()> {
    use crate::store::dead_letters::Redriven;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        let count = |f: fn(&Redriven) -> bool| outcomes.iter().filter(|o| f(o)).count();
        println!(
            "{} dead letters of {}: {} back on {}, {} refused again with a new reason, {} refused for the same reason, {} cannot be redriven, {} already gone",
            outcomes.len(),
            args.kind,
            count(|o| matches!(o, Redriven::Back { .. })),
            args.kind.stream(),
            count(|o| matches!(o, Redriven::Replaced { .. })),
            count(|o| matches!(o, Redriven::Unchanged { .. })),
            count(|o| matches!(o, Redriven::NotRedrivable { .. })),
            count(|o| matches!(o, Redriven::Gone { .. })),
        );
        for outcome in outcomes {
            match outcome {
                Redriven::Replaced {
                    id,
                    new_id,
                    reason_code,
                    reason,
                } => println!("  {id} -> {new_id}: still refused, {reason_code}: {reason}"),
                Redriven::NotRedrivable { id, why } => {
                    println!("  {id}: cannot be redriven: {why}")
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Dead letters as JSON, as a table (`list`), or each in full (`show`).
fn print_letters(
    args: &DeadLetterArgs,
    letters: &[crate::store::dead_letters::DeadLetter],
    total: u64,
    show: bool,
) -> anyhow::Result<()> {
    if args.json {
        let mut values = serde_json::to_value(letters)?;
        if !show && let Some(items) = values.as_array_mut() {
            for item in items.iter_mut().filter_map(|v| v.as_object_mut()) {
                item.remove("data");
            }
        }
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    println!(
        "{} of {total} dead letters in {}",
        letters.len(),
        args.kind.dead_letter_stream()
    );
    for letter in letters {
        let at = letter
            .at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        if show {
            println!("\n{}  {at} UTC", letter.id);
            println!("  reason:  {}: {}", letter.reason_code, letter.reason);
            println!("  source:  {}", letter.source);
            println!(
                "  size:    {} bytes{}, sha1 {}",
                letter.size,
                if letter.truncated {
                    " (only a prefix is kept)"
                } else {
                    ""
                },
                letter.sha1
            );
            if let Some(from) = &letter.redriven_from {
                println!("  replaces {from} (refused again by a redrive)");
            }
            println!("  data:    {}", String::from_utf8_lossy(&letter.data));
        } else {
            let reason: String = letter.reason.chars().take(100).collect();
            println!(
                "{:<22} {at}  {:<24} {:>8}{}  {reason}",
                letter.id,
                letter.reason_code,
                letter.size,
                if letter.truncated { "*" } else { " " }
            );
        }
    }
    Ok(())
}

async fn monitor(settings: Settings, json: bool, bigquery: bool) -> anyhow::Result<ExitCode> {
    let report = crate::monitor::check(&settings.monitor_context(), bigquery).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::from(report.exit_code()))
}

async fn init(settings: Settings) -> anyhow::Result<ExitCode> {
    let warehouse = warehouse::configured(&settings.warehouse).await?;
    for kind in EventKind::ALL {
        let table = TableSpec::for_kind(kind);
        warehouse
            .ensure_table(table)
            .await
            .with_context(|| format!("cannot create {}", table.qualified()))?;
        println!(
            "ready: {} (day partitions on {}) in {}",
            table.qualified(),
            table.partition_field,
            warehouse.describe()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn batch_upload(
    settings: Settings,
    mut options: UploadOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // SIGTERM or SIGINT: finish the batch in hand, keep the rest for later.
    let stop = CancellationToken::new();
    startup::cancel_on_signal(stop.clone());
    options.stop = Some(stop);
    let report =
        upload::run_configured(&settings.upload_context(), &settings.warehouse, options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::from(report.exit_code()))
}

async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let app = Application::build(settings).await?;
    let shutdown = CancellationToken::new();
    startup::cancel_on_signal(shutdown.clone());
    // Err: could not start (exit 2); a task that ended unexpectedly: exit 1.
    let stopped = app.run_until_stopped(shutdown).await?;
    for failure in &stopped.failures {
        eprintln!("error: {failure}");
    }
    Ok(ExitCode::from(stopped.exit_code()))
}

/// Pushes every good line; bad lines are reported with their number and the
/// command exits 1, so nothing is dropped without the user being told.
async fn push(
    settings: Settings,
    kind: EventKind,
    file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let producer = settings.producer()?;
    let input: Box<dyn AsyncRead + Unpin + Send> = match &file {
        None => Box::new(tokio::io::stdin()),
        Some(path) if path.as_os_str() == "-" => Box::new(tokio::io::stdin()),
        Some(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
    };
    let mut reader = BufReader::new(input);
    let limit = settings.door.max_event_bytes;
    let mut line_number = 0u64;
    let mut bad = 0u64;
    let mut totals = Totals::default();
    let mut chunk = Vec::with_capacity(PIPELINE_CHUNK);
    while let Some(line) = next_line(&mut reader, limit).await? {
        line_number += 1;
        let outcome = match line {
            Line::TooLong(size) => {
                let rejection = crate::event::Rejection::TooLarge { size, limit };
                Err(format!("{}: {rejection}", rejection.code()))
            }
            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(text) => producer
                .prepare(kind, &text)
                .map_err(|rejection| format!("{}: {rejection}", rejection.code())),
        };
        match outcome {
            Ok(event) => chunk.push(event.payload),
            Err(reason) => {
                bad += 1;
                eprintln!("line {line_number}: {reason}");
            }
        }
        if chunk.len() == PIPELINE_CHUNK {
            totals.send(&producer, kind, &mut chunk).await?;
        }
    }
    totals.send(&producer, kind, &mut chunk).await?;
    println!(
        "pushed {} {kind} events ({} to the stream, {} spooled); {bad} bad lines",
        totals.streamed + totals.spooled,
        totals.streamed,
        totals.spooled
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn generate(
    settings: Settings,
    count: u64,
    kind: GenerateKind,
    seed: Option<u64>,
    days: u32,
) -> anyhow::Result<ExitCode> {
    let producer = settings.producer()?;
    let mut generator = Generator::new(seed.unwrap_or_else(rand::random), chrono::Utc::now(), days);
    let started = Instant::now();
    let mut transactions = Vec::with_capacity(PIPELINE_CHUNK);
    let mut predictions = Vec::with_capacity(PIPELINE_CHUNK);
    let mut totals = Totals::default();
    for n in 0..count {
        let pair = generator.next_pair();
        if kind != GenerateKind::Predictions {
            transactions.push(
                producer
                    .prepare(EventKind::Transaction, pair.transaction.as_bytes())?
                    .payload,
            );
        }
        if kind != GenerateKind::Transactions {
            predictions.push(
                producer
                    .prepare(EventKind::Prediction, pair.prediction.as_bytes())?
                    .payload,
            );
        }
        if transactions.len() + predictions.len() >= PIPELINE_CHUNK || n + 1 == count {
            totals
                .send(&producer, EventKind::Transaction, &mut transactions)
                .await?;
            totals
                .send(&producer, EventKind::Prediction, &mut predictions)
                .await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let events = totals.streamed + totals.spooled;
    println!(
        "generated {events} events ({} to the streams, {} spooled) in {seconds:.2} s, {:.0} events/s",
        totals.streamed,
        totals.spooled,
        events as f64 / seconds.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

async fn replay_spool(settings: Settings) -> anyhow::Result<ExitCode> {
    let producer = settings.producer()?;
    let report = producer.replay_spool().await?;
    let left = producer.spool().bytes();
    println!(
        "replayed {} events from {} spool files; {} unreadable lines kept; {left} bytes left in {}",
        report.events,
        report.files,
        report.unreadable,
        producer.spool().dir().display()
    );
    Ok(if left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Default)]
struct Totals {
    streamed: u64,
    spooled: u64,
}

impl Totals {
    async fn send(
        &mut self,
        producer: &Producer,
        kind: EventKind,
        payloads: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        if payloads.is_empty() {
            return Ok(());
        }
        let count = payloads.len() as u64;
        match producer.send_prepared(kind, payloads).await? {
            Delivery::Streamed => self.streamed += count,
            Delivery::Spooled => self.spooled += count,
        }
        payloads.clear();
        Ok(())
    }
}

enum Line {
    Text(Vec<u8>),
    /// The line was longer than the limit; it was read past, not kept.
    TooLong(usize),
}

/// Reads one line without ever holding more than `limit` bytes of it.
async fn next_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limit: usize,
) -> anyhow::Result<Option<Line>> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Some(Line::Text(line)));
    }
    if line.len() <= limit {
        return Ok(Some(Line::Text(line))); // last line without a newline
    }
    // Over the limit: skip to the end of the line.
    let mut skipped = line.len();
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            break;
        }
        match buffer.iter().position(|b| *b == b'\n') {
            Some(at) => {
                skipped += at;
                reader.consume(at + 1);
                break;
            }
            None => {
                let len = buffer.len();
                skipped += len;
                reader.consume(len);
            }
        }
    }
    Ok(Some(Line::TooLong(skipped)))
}
