//! `aop backup` and `aop restore`: the archive of everything the platform stores, to a file or
//! standard output, and back into an empty store (the embedded one or Neo4j, whichever wrote it).

use std::path::PathBuf;
use std::time::Duration;

use aop_core::backup::BackupSource;
use aop_runtime::backup::{self, BackupError, Header, Progress, Summary};
use aop_runtime::{Config, Role};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{BoxError, CommonArgs};

/// The configuration, with logs on stderr: stdout may carry the archive.
fn load(common: &CommonArgs) -> Result<Config, BoxError> {
    let config = Config::load(common.config.as_deref(), &common.overrides())?;
    aop_runtime::telemetry::init_stderr(config.log_level())?;
    Ok(config)
}

#[derive(Args, Clone)]
pub struct BackupArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The archive to write (gzip-compressed JSON Lines); `-` writes to standard output.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// On Neo4j, how many times to read the graph over when it changed during the backup
    /// (writing to a file only).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
}

#[derive(Args, Clone)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The archive to load.
    #[arg(long = "in", value_name = "FILE")]
    pub input: PathBuf,
}

/// A bar on standard error when it is a terminal; nothing otherwise.
struct Bar(ProgressBar);

impl Bar {
    fn new(verb: &str) -> Result<Self, BoxError> {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {{bar:32}} {{pos}}/{{len}} records {verb}"
            ))?
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Ok(Self(bar))
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
    }

    fn advance(&self, records: u64) {
        self.0.inc(records);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The embedded store's database file, which must exist for a backup.
fn database_file(config: &Config) -> PathBuf {
    config.sqlite.data_dir.join(aop_store_sqlite::DB_FILE)
}

pub fn run_backup(args: &BackupArgs) -> Result<(), BoxError> {
    let config = load(&args.common)?;
    let runtime = runtime()?;
    let to_stdout = args.out.as_os_str() == "-";
    if !to_stdout {
        // Before connecting to anything.
        backup::ensure_absent(&args.out)?;
    }
    let summary = runtime.block_on(async {
        let (config, secrets) = aop_runtime::settle(config, Role::Local).await?;
        let bar = Bar::new("backed up")?;
        let mut header = Header {
            format: backup::FORMAT.into(),
            version: backup::FORMAT_VERSION,
            created_at: aop_core::Clock::now_ms(&aop_core::SystemClock),
            source: String::new(),
            aop: env!("CARGO_PKG_VERSION").into(),
        };
        let write = async |source: &dyn BackupSource, header: &Header| {
            if !to_stdout {
                return backup::backup_to_file(source, &args.out, header, &bar, args.attempts)
                    .await
                    .map_err(BoxError::from);
            }
            backup::write_backup(source, std::io::stdout().lock(), header, &bar)
                .await
                .map_err(|e| match e {
                    BackupError::Changed { .. } => format!(
                        "{e}. Standard output got an archive without its end line, which a \
                         restore refuses; write to a file (--out FILE) to let the backup start \
                         over by itself, or back up when writers pause"
                    )
                    .into(),
                    e => BoxError::from(e),
                })
        };
        let summary = if config.neo4j.is_some() {
            let stores = aop_runtime::roles::open_stores(&config, secrets.as_ref())?;
            let store = stores.neo4j().ok_or("the Neo4j store did not open")?;
            aop_store_neo4j::migrations::check(store).await?;
            header.source = stores.description().to_owned();
            write(store, &header).await
        } else {
            let path = database_file(&config);
            if !path.exists() {
                return Err(format!("there is no embedded store at {}", path.display()).into());
            }
            let store = aop_store_sqlite::SqliteStore::open(&path)?;
            header.source = format!("sqlite at {}", path.display());
            let snapshot = store.snapshot()?;
            write(&snapshot, &header).await
        };
        bar.0.finish_and_clear();
        summary
    })?;
    eprintln!(
        "backed up {} records ({}) to {}; sha256 {}",
        summary.records,
        summary.describe(),
        if to_stdout {
            "standard output".into()
        } else {
            args.out.display().to_string()
        },
        summary.sha256
    );
    Ok(())
}

pub fn run_restore(args: &RestoreArgs) -> Result<(), BoxError> {
    let config = load(&args.common)?;
    let runtime = runtime()?;
    if args.input.as_os_str() == "-" {
        return Err(
            "--in needs a file: a restore reads the archive twice (checking it whole \
                    before loading anything), which standard input cannot do"
                .into(),
        );
    }
    let verified = backup::verify(backup::open(&args.input)?)?;
    eprintln!(
        "{} is whole: {} records ({}), written {} by aop {} from {}",
        args.input.display(),
        verified.summary.records,
        verified.summary.describe(),
        aop_core::time::rfc3339(verified.header.created_at),
        verified.header.aop,
        verified.header.source
    );
    let summary = runtime.block_on(async {
        let (config, secrets) = aop_runtime::settle(config, Role::Local).await?;
        let bar = Bar::new("restored")?;
        let input = backup::open(&args.input)?;
        let summary = if config.neo4j.is_some() {
            let stores = aop_runtime::roles::open_stores(&config, secrets.as_ref())?;
            let store = stores.neo4j().ok_or("the Neo4j store did not open")?;
            aop_store_neo4j::migrations::migrate(store).await?;
            backup::restore(input, &verified, store, &bar).await?
        } else {
            backup::restore_embedded(&database_file(&config), input, &verified, &bar).await?
        };
        bar.0.finish_and_clear();
        Ok::<Summary, BoxError>(summary)
    })?;
    eprintln!(
        "restored {} records ({}) from {}",
        summary.records,
        summary.describe(),
        args.input.display()
    );
    Ok(())
}
