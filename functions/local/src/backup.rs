//! `aop backup` and `aop restore`: the archive of everything the platform stores, to a file or
//! standard output, and back into an empty store (the embedded one or Neo4j, whichever wrote it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aop_runtime::backup::{self, Header, Progress, Summary};
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
    let partial = partial_path(&args.out);
    if !to_stdout && args.out.exists() {
        return Err(format!(
            "{} exists: choose another name, or remove it first",
            args.out.display()
        )
        .into());
    }
    let summary = runtime.block_on(async {
        let (config, secrets) = aop_runtime::settle(config, Role::Local).await?;
        let bar = Bar::new("backed up")?;
        let mut header = Header {
            format: backup::FORMAT.into(),
            version: backup::FORMAT_VERSION,
            created_at: now_ms(),
            source: String::new(),
            aop: env!("CARGO_PKG_VERSION").into(),
        };
        let out: Box<dyn Write> = if to_stdout {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(&partial)
                    .map_err(|e| format!("cannot create {}: {e}", partial.display()))?,
            ))
        };
        let summary = if config.neo4j.is_some() {
            let stores = aop_runtime::roles::open_stores(&config, secrets.as_ref())?;
            let store = stores.neo4j().ok_or("the Neo4j store did not open")?;
            aop_store_neo4j::migrations::check(store).await?;
            header.source = stores.description().to_owned();
            backup::write_backup(store, out, &header, &bar).await
        } else {
            let path = database_file(&config);
            if !path.exists() {
                return Err(format!("there is no embedded store at {}", path.display()).into());
            }
            let store = aop_store_sqlite::SqliteStore::open(&path)?;
            header.source = format!("sqlite at {}", path.display());
            let snapshot = store.snapshot()?;
            backup::write_backup(&snapshot, out, &header, &bar).await
        };
        bar.0.finish_and_clear();
        Ok::<Summary, BoxError>(summary?)
    });
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(e);
        }
    };
    if !to_stdout {
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&partial, &args.out))
            .map_err(|e| format!("cannot move the archive into {}: {e}", args.out.display()))?;
    }
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

/// Where a backup is written until it is complete: `FILE.partial`.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
