//! Backups of everything the platform stores, and restores from them, whatever the store.
//!
//! An archive is gzip-compressed JSON Lines: a header line (format name and version, when, from
//! where), one line per record (`{"kind": ..., "data": {...}}`, kinds in the order of
//! [`Kind::ALL`], each kind in key order), and an end line with the number of records per kind
//! and the SHA-256 of every byte before it. Nothing is held in memory but a page of records, so a
//! store of any size streams through. A restore reads the archive twice: first to check the
//! format version, every record, the counts and the checksum, and only then to load it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use aop_core::StoreError;
use aop_core::backup::{BackupSource, Kind, Record, RestoreTarget};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `format` of every archive's header.
pub const FORMAT: &str = "aop-backup";
/// The archive layout this build writes; it reads this one and older ones.
pub const FORMAT_VERSION: u32 = 1;
/// Records read from the store per call.
const PAGE: u32 = 500;
/// Records loaded per transaction: at most this many, or this many bytes of archive.
const BATCH_RECORDS: usize = 500;
const BATCH_BYTES: usize = 8 << 20;
/// The longest line an archive may hold (one record).
const MAX_LINE: usize = 256 << 20;

/// The first line of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// When the backup began, epoch milliseconds.
    pub created_at: i64,
    /// The store it was taken from (`sqlite at ...`, `neo4j at ...`).
    pub source: String,
    /// The `aop` version that wrote it.
    pub aop: String,
}

/// The last line of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Trailer {
    end: End,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct End {
    records: u64,
    counts: BTreeMap<Kind, u64>,
    /// SHA-256 of every byte before this line, hex.
    sha256: String,
}

/// What went wrong with a backup or a restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The archive is not one this build can restore; says why and where.
    #[error("{0}")]
    Archive(String),
    /// A store that cannot read one snapshot was written to while the backup read it, on each
    /// of `attempts` tries: the last time, the second reading differed from the first in
    /// `kinds`. The archive has no end line.
    #[error(
        "the store changed while the backup read it{} ({}): on a store without snapshot reads \
         (Neo4j) a backup reads everything twice and completes only when both readings agree",
        match .attempts { 1 => String::new(), n => format!(", on each of {n} tries; the last time") },
        describe_kinds(.kinds)
    )]
    Changed { kinds: Vec<Kind>, attempts: u32 },
    /// The archive's file exists already; a backup never overwrites one.
    #[error("{} exists: choose another name, or remove it first", .0.display())]
    Exists(std::path::PathBuf),
    /// The target store holds data already; names what.
    #[error(
        "the target store is not empty: it holds {0}; restore only into an empty store (a new \
         data directory, or an empty Neo4j database)"
    )]
    NotEmpty(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Told how far a backup or restore has got, for a progress bar.
pub trait Progress {
    /// `total` records are to come.
    fn start(&self, _total: u64) {}
    fn advance(&self, _records: u64) {}
}

/// No progress shown.
pub struct Quiet;
impl Progress for Quiet {}

/// What a backup or restore moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub records: u64,
    pub counts: BTreeMap<Kind, u64>,
    /// The archive's checksum (its end line's).
    pub sha256: String,
}

impl Summary {
    /// `3 agents, 7 agent versions, ...`, in archive order.
    pub fn describe(&self) -> String {
        describe(self.counts.iter().map(|(k, n)| (*k, *n)))
    }
}

fn describe_kinds(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.plural())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(counts: impl Iterator<Item = (Kind, u64)>) -> String {
    let parts: Vec<String> = counts
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {}", k.noun(n)))
        .collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// Writes a line and hashes it.
struct Lines<W: Write> {
    out: GzEncoder<W>,
    hash: Sha256,
    buf: Vec<u8>,
}

/// `value` as one archive line (JSON and a newline) in `buf`, which it empties first.
fn encode(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<(), BackupError> {
    buf.clear();
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| BackupError::Archive(format!("cannot encode a line of the archive: {e}")))?;
    buf.push(b'\n');
    Ok(())
}

impl<W: Write> Lines<W> {
    /// Writes `value` as a line; `hashed` says whether it counts towards the end line's
    /// checksum (every line but the end line does).
    fn write(&mut self, value: &impl Serialize, hashed: bool) -> Result<(), BackupError> {
        encode(&mut self.buf, value)?;
        if hashed {
            self.hash.update(&self.buf);
        }
        self.out
            .write_all(&self.buf)
            .map_err(io("cannot write the archive"))
    }
}

/// Writes every record of `source` to `out` as an archive.
///
/// A source that does not read one snapshot ([`BackupSource::reads_one_snapshot`]) is read a
/// second time before the end line is written, and each kind's records are compared (by a
/// SHA-256 of their lines): a write that landed during the backup shows in the second reading of
/// a kind read before it, so an archive that gets its end line is the store as it was when the
/// first reading finished.
///
/// # Errors
/// `Store` when a read fails, `Io` when a write does, `Changed` when the two readings differ;
/// what was written is then incomplete (no end line) and a restore refuses it.
pub async fn write_backup<W: Write>(
    source: &dyn BackupSource,
    out: W,
    header: &Header,
    progress: &dyn Progress,
) -> Result<Summary, BackupError> {
    let census = source.census().await?;
    let twice = !source.reads_one_snapshot();
    let total: u64 = census.iter().map(|(_, n)| n).sum();
    progress.start(if twice { 2 * total } else { total });
    let mut lines = Lines {
        out: GzEncoder::new(out, Compression::default()),
        hash: Sha256::new(),
        buf: Vec::new(),
    };
    lines.write(header, true)?;
    let mut counts = BTreeMap::new();
    let mut records = 0u64;
    let mut digests = BTreeMap::new();
    for kind in Kind::ALL {
        let mut digest = Sha256::new();
        let n = read_kind(source, kind, progress, |record| {
            lines.write(record, true)?;
            digest.update(&lines.buf);
            Ok(())
        })
        .await?;
        if n > 0 {
            counts.insert(kind, n);
            records += n;
        }
        digests.insert(kind, digest.finalize());
    }
    if twice {
        let mut changed = Vec::new();
        let mut buf = Vec::new();
        for kind in Kind::ALL {
            let mut digest = Sha256::new();
            read_kind(source, kind, progress, |record| {
                encode(&mut buf, record)?;
                digest.update(&buf);
                Ok(())
            })
            .await?;
            if digests.get(&kind) != Some(&digest.finalize()) {
                changed.push(kind);
            }
        }
        if !changed.is_empty() {
            // A whole gzip stream without an end line: a restore names what is missing.
            let _ = lines.out.finish().and_then(|mut w| w.flush());
            return Err(BackupError::Changed {
                kinds: changed,
                attempts: 1,
            });
        }
    }
    let sha256 = hex(&lines.hash.clone().finalize());
    let trailer = Trailer {
        end: End {
            records,
            counts: counts.clone(),
            sha256: sha256.clone(),
        },
    };
    lines.write(&trailer, false)?;
    lines
        .out
        .finish()
        .and_then(|mut w| w.flush())
        .map_err(io("cannot finish the archive"))?;
    Ok(Summary {
        records,
        counts,
        sha256,
    })
}

/// Reads every record of `kind`, a page at a time, handing each to `each`; returns how many.
async fn read_kind(
    source: &dyn BackupSource,
    kind: Kind,
    progress: &dyn Progress,
    mut each: impl FnMut(&Record) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let mut after: Option<String> = None;
    let mut n = 0u64;
    loop {
        let page = source.export(kind, after.as_deref(), PAGE).await?;
        for record in &page.records {
            each(record)?;
        }
        let got = page.records.len() as u64;
        n += got;
        progress.advance(got);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(n),
        }
    }
}

/// Writes an archive of `source` to `path`, through `PATH.partial` renamed into place only when
/// complete and on disk. When the store changed while it was read ([`BackupError::Changed`]),
/// the backup starts over, up to `attempts` times in all, a little later each time.
///
/// # Errors
/// As [`write_backup`], the last attempt's (`Changed` counting the attempts); `Exists` when
/// `path` exists already. Nothing is left at `path` or `PATH.partial` then.
pub async fn backup_to_file(
    source: &dyn BackupSource,
    path: &Path,
    header: &Header,
    progress: &dyn Progress,
    attempts: u32,
) -> Result<Summary, BackupError> {
    ensure_absent(path)?;
    let partial = partial_path(path);
    let mut attempt = 1;
    loop {
        let file = std::fs::File::create(&partial)
            .map_err(io(format!("cannot create {}", partial.display())))?;
        let mut header = header.clone();
        if attempt > 1 {
            header.created_at = aop_core::Clock::now_ms(&aop_core::SystemClock);
        }
        let written = write_backup(source, std::io::BufWriter::new(file), &header, progress).await;
        match written {
            Ok(summary) => {
                return std::fs::File::open(&partial)
                    .and_then(|f| f.sync_all())
                    .and_then(|()| std::fs::rename(&partial, path))
                    .map(|()| summary)
                    .map_err(io(format!(
                        "cannot move the archive into {}",
                        path.display()
                    )))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&partial);
                    });
            }
            Err(BackupError::Changed { kinds, .. }) if attempt < attempts => {
                tracing::warn!(
                    attempt,
                    changed = %describe_kinds(&kinds),
                    "the store changed while the backup read it; starting over"
                );
                let _ = std::fs::remove_file(&partial);
                tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(match e {
                    BackupError::Changed { kinds, .. } => BackupError::Changed { kinds, attempts },
                    e => e,
                });
            }
        }
    }
}

/// Refuses a backup's target file that exists already.
///
/// # Errors
/// `Exists` naming it.
pub fn ensure_absent(path: &Path) -> Result<(), BackupError> {
    if path.exists() {
        return Err(BackupError::Exists(path.to_owned()));
    }
    Ok(())
}

/// Where a backup is written until it is complete: `FILE.partial`.
pub fn partial_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    std::path::PathBuf::from(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads an archive's lines, with their line numbers.
struct LineReader<R: Read> {
    input: BufReader<MultiGzDecoder<R>>,
    line: u64,
    buf: Vec<u8>,
}

impl<R: Read> LineReader<R> {
    fn new(input: R) -> Self {
        Self {
            input: BufReader::with_capacity(1 << 16, MultiGzDecoder::new(input)),
            line: 0,
            buf: Vec::new(),
        }
    }

    /// The next line (with its newline), or `None` at the end.
    fn next(&mut self) -> Result<Option<&[u8]>, BackupError> {
        self.buf.clear();
        let n = (&mut self.input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| {
                let at = match self.line {
                    0 => String::new(),
                    n => format!(" after line {n}"),
                };
                BackupError::Archive(format!(
                    "cannot read the archive{at} (not gzip, or damaged or truncated): {e}"
                ))
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.len() > MAX_LINE {
            return Err(BackupError::Archive(format!(
                "line {} of the archive is longer than {MAX_LINE} bytes",
                self.line
            )));
        }
        if self.buf.last() != Some(&b'\n') {
            return Err(BackupError::Archive(format!(
                "the archive is truncated: line {} is cut short",
                self.line
            )));
        }
        Ok(Some(&self.buf))
    }
}

fn parse_header(line: Option<&[u8]>) -> Result<Header, BackupError> {
    let line = line.ok_or_else(|| BackupError::Archive("the archive is empty".into()))?;
    let header: Header = serde_json::from_slice(line)
        .ok()
        .filter(|h: &Header| h.format == FORMAT)
        .ok_or_else(|| {
            BackupError::Archive(format!(
                "this is not an {FORMAT} archive (its first line is not an {FORMAT} header)"
            ))
        })?;
    if header.version > FORMAT_VERSION || header.version == 0 {
        return Err(BackupError::Archive(format!(
            "the archive is format version {}, this build reads version {FORMAT_VERSION} and \
             older: restore it with the aop that wrote it ({}) or a newer one",
            header.version, header.aop
        )));
    }
    Ok(header)
}

/// An archive that was read through and found whole.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Header,
    pub summary: Summary,
}

/// Reads the whole archive once: its header and format version first, then every record
/// (each must decode, kinds in order), then the end line's counts and checksum.
///
/// # Errors
/// `Archive` saying what is wrong and on which line: not an archive, a newer format, a damaged
/// or truncated file, a record that does not decode, a checksum or count that does not match.
pub fn verify(input: impl Read) -> Result<Verified, BackupError> {
    let mut lines = LineReader::new(input);
    let mut hash = Sha256::new();
    let header = parse_header(lines.next()?)?;
    hash.update(&lines.buf);
    let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut records = 0u64;
    let mut last_kind: Option<Kind> = None;
    let trailer = loop {
        let number = lines.line + 1;
        let Some(line) = lines.next()? else {
            return Err(BackupError::Archive(format!(
                "the archive is truncated: it ends after {records} records without its end line"
            )));
        };
        if line.starts_with(b"{\"end\"") {
            let trailer: Trailer = serde_json::from_slice(line).map_err(|e| {
                BackupError::Archive(format!("line {number}: the end line is damaged: {e}"))
            })?;
            if lines.next()?.is_some() {
                return Err(BackupError::Archive(format!(
                    "the archive goes on after its end line (line {number})"
                )));
            }
            break trailer;
        }
        hash.update(line);
        let record: Record = serde_json::from_slice(line).map_err(|e| {
            BackupError::Archive(format!("line {number}: not a record this build reads: {e}"))
        })?;
        let kind = record.kind();
        if last_kind.is_some_and(|k| k > kind) {
            return Err(BackupError::Archive(format!(
                "line {number}: a {kind} record after {} records: kinds are out of order",
                last_kind.map_or("", Kind::as_str)
            )));
        }
        last_kind = Some(kind);
        *counts.entry(kind).or_insert(0) += 1;
        records += 1;
    };
    let sha256 = hex(&hash.finalize());
    if sha256 != trailer.end.sha256 {
        return Err(BackupError::Archive(format!(
            "the archive is damaged: its checksum is {sha256}, its end line says {}",
            trailer.end.sha256
        )));
    }
    if records != trailer.end.records || counts != trailer.end.counts {
        return Err(BackupError::Archive(format!(
            "the archive is damaged: it holds {}, its end line says {}",
            describe(counts.iter().map(|(k, n)| (*k, *n))),
            describe(trailer.end.counts.iter().map(|(k, n)| (*k, *n)))
        )));
    }
    Ok(Verified {
        header,
        summary: Summary {
            records,
            counts,
            sha256,
        },
    })
}

/// Refuses a store that holds anything, naming what.
///
/// # Errors
/// `NotEmpty` listing what the store holds.
pub fn ensure_empty(census: &[(Kind, u64)]) -> Result<(), BackupError> {
    if census.iter().any(|(_, n)| *n > 0) {
        return Err(BackupError::NotEmpty(describe(census.iter().copied())));
    }
    Ok(())
}

/// Loads a [`verify`]-ed archive into `target`, which must be empty, or hold an interrupted
/// restore of the same archive (which then carries on where it stopped). Loads a batch per
/// transaction, in archive order.
///
/// # Errors
/// `NotEmpty` for a store with other data; `Archive` when the input differs from what was
/// verified; `Store` when the store refuses a batch (what earlier batches loaded stays, marked
/// as an unfinished restore that a new run of the same archive completes).
pub async fn restore(
    input: impl Read,
    verified: &Verified,
    target: &dyn RestoreTarget,
    progress: &dyn Progress,
) -> Result<Summary, BackupError> {
    let archive = verified.summary.sha256.as_str();
    let skip = match target.restored_so_far(archive).await? {
        Some(done) => done,
        None => {
            ensure_empty(&target.census().await?)?;
            0
        }
    };
    progress.start(verified.summary.records);
    progress.advance(skip);
    let mut lines = LineReader::new(input);
    parse_header(lines.next()?)?;
    // What is loaded must be what was verified: the file could be replaced in between.
    let mut hash = Sha256::new();
    hash.update(&lines.buf);
    let mut done = 0u64;
    let mut batch = Batch {
        target,
        progress,
        archive,
        records: Vec::new(),
        bytes: 0,
    };
    loop {
        let number = lines.line + 1;
        let Some(line) = lines.next()? else {
            return Err(BackupError::Archive(
                "the archive changed while it was restored (it ends early)".into(),
            ));
        };
        if line.starts_with(b"{\"end\"") {
            break;
        }
        hash.update(line);
        done += 1;
        if done <= skip {
            continue;
        }
        let record: Record = serde_json::from_slice(line).map_err(|e| {
            BackupError::Archive(format!(
                "the archive changed while it was restored (line {number}: {e})"
            ))
        })?;
        // One kind per transaction: the records before this one are all loaded then.
        if batch
            .records
            .first()
            .is_some_and(|first| first.kind() != record.kind())
        {
            batch.load(done - 1).await?;
        }
        batch.bytes += line.len();
        batch.records.push(record);
        if batch.records.len() >= BATCH_RECORDS || batch.bytes >= BATCH_BYTES {
            batch.load(done).await?;
        }
    }
    if hex(&hash.finalize()) != archive {
        return Err(BackupError::Archive(
            "the archive changed while it was restored (its checksum differs from the one \
             checked first); nothing more was loaded"
                .into(),
        ));
    }
    batch.load(done).await?;
    target.finish_restore(archive).await?;
    Ok(verified.summary.clone())
}

/// Restores into the embedded store's database file at `path`, which must be absent or empty:
/// loads a staged file beside it and puts it in place only when everything is in.
///
/// # Errors
/// As [`restore`]; `NotEmpty` when the file holds data; `Io` when its directory cannot be made.
#[cfg(feature = "embedded")]
pub async fn restore_embedded(
    path: &Path,
    input: impl Read,
    verified: &Verified,
    progress: &dyn Progress,
) -> Result<Summary, BackupError> {
    use aop_store_sqlite::SqliteStore;
    if path.exists() {
        let existing = SqliteStore::open(path)?;
        ensure_empty(&RestoreTarget::census(&existing).await?)?;
    } else if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    let staged = SqliteStore::stage_restore(path)?;
    let summary = restore(input, verified, staged.store(), progress).await?;
    staged.commit()?;
    Ok(summary)
}

/// Records of one kind waiting to be loaded in one transaction.
struct Batch<'a> {
    target: &'a dyn RestoreTarget,
    progress: &'a dyn Progress,
    archive: &'a str,
    records: Vec<Record>,
    bytes: usize,
}

impl Batch<'_> {
    /// Loads what is waiting, recording that the archive's first `done` records are in.
    async fn load(&mut self, done: u64) -> Result<(), BackupError> {
        if self.records.is_empty() {
            return Ok(());
        }
        self.target
            .import(self.archive, done, &self.records)
            .await?;
        self.progress.advance(self.records.len() as u64);
        self.records.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Opens an archive file for reading.
///
/// # Errors
/// `Io` naming the file.
pub fn open(path: &Path) -> Result<std::fs::File, BackupError> {
    std::fs::File::open(path).map_err(io(format!("cannot open {}", path.display())))
}
