//! The operator commands: `checkpoints`, `inspect` and `gc`, on a
//! filesystem directory or an object-store URL.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use flowstate_api::checkpoint::{
    checkpoint_dir_id, BlobPath, BlobStore, CheckpointLocation, KeyGroupsStateHandle, NativeFormat, OperatorState,
    OperatorStateHandle, StateReader, StateScope, StreamStateHandle, METADATA_FILE, SHARED_DIR,
};
use flowstate_api::format::canonical::{CanonicalSnapshot, SnapshotHeader};
use flowstate_api::lifecycle::GcOptions;
use flowstate_api::*;
use flowstate_fs::FsBlobStore;
use serde::Serialize;

use crate::stores::{is_url, object_store_builder};

/// What a command found: its exit code is 0 for `Clean` and 1 for
/// `Findings` (a damaged checkpoint, orphans); errors exit with 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report.
    Clean,
    /// Something an operator must look at.
    Findings,
}

/// Options every command that reads storage takes.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// An option of the object store (`KEY=VALUE`, e.g.
    /// `aws_endpoint=http://127.0.0.1:9000`); repeatable.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    pub storage_options: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The store rooted at `location`: a directory that must exist, or an
/// object-store URL.
fn open_store(location: &str, args: &StoreArgs) -> Result<Arc<dyn BlobStore>> {
    if is_url(location) {
        return Ok(Arc::new(
            object_store_builder(location, &args.storage_options)?.build()?,
        ));
    }
    let path = Path::new(location);
    let meta = std::fs::metadata(path).map_err(|e| Error::io(location, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!("{location}: not a directory")));
    }
    let path = path.canonicalize().map_err(|e| Error::io(location, e))?;
    Ok(Arc::new(FsBlobStore::new(&path).keeping(&[
        flowstate_api::checkpoint::SHARED_DIR,
        flowstate_api::checkpoint::TASK_OWNED_DIR,
    ])))
}

/// The last path segment of `location`, as a job id.
fn job_of(location: &str) -> String {
    let name = location.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name.contains(['\0', '\\']) || name == "." || name == ".." {
        "job".into()
    } else {
        name.to_string()
    }
}

fn storage_at(location: &str, args: &StoreArgs) -> Result<(Arc<dyn BlobStore>, Arc<CheckpointStorage>)> {
    let store = open_store(location, args)?;
    let storage = CheckpointStorage::new(Arc::clone(&store), &job_of(location))?;
    Ok((store, Arc::new(storage)))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of milliseconds since the Unix epoch.
fn utc(millis: u64) -> String {
    let secs = millis / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Bytes in a unit a person reads at a glance.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

// ---------------------------------------------------------------- checkpoints

/// `flowstate checkpoints`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  flowstate checkpoints /tmp/demo/checkpoints/flowstate-demo\n  flowstate checkpoints \
                        s3://bucket/checkpoints/my-job --savepoints s3://bucket/savepoints --json"
)]
pub struct CheckpointsArgs {
    /// The job's checkpoint directory (holding `chk-<n>/`, `shared/`,
    /// `taskowned/`), or its object-store URL.
    pub target: String,
    /// Also list the savepoints under this directory or URL.
    #[arg(long, value_name = "DIR|URL")]
    pub savepoints: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// One checkpoint or savepoint of a listing.
#[derive(Debug, Serialize)]
struct Listed {
    id: Option<u64>,
    kind: &'static str,
    /// `complete`, `incomplete` (no `_metadata`) or `unreadable`.
    status: &'static str,
    latest: bool,
    pointer: String,
    time: Option<String>,
    state_size: Option<u64>,
    files: Option<usize>,
    /// Files also referenced by another checkpoint of the listing.
    shared_files: Option<usize>,
    /// SlateDB checkpoints referenced (one per subtask on the SlateDB
    /// backend, which writes no files of its own).
    slatedb_checkpoints: Option<usize>,
    error: Option<String>,
}

/// The checkpoint and savepoint directories directly under `store`'s root.
async fn list_under(store: &Arc<dyn BlobStore>, storage: &CheckpointStorage) -> Result<Vec<(Listed, Vec<String>)>> {
    let mut out = Vec::new();
    let mut dirs = store.list_level(None).await?.dirs;
    dirs.sort_by_key(|d| {
        let name = d.as_str();
        (checkpoint_dir_id(name).unwrap_or(u64::MAX), name.to_string())
    });
    for dir in dirs {
        let name = dir.as_str();
        let (id, kind) = match checkpoint_dir_id(name) {
            Some(id) => (Some(id), "checkpoint"),
            None if name.starts_with("savepoint-") => (None, "savepoint"),
            // Not ours: `chk-x`, `chk-007`, anything else.
            None => continue,
        };
        let pointer = format!("{}/{name}", store.root().trim_end_matches('/'));
        let mut listed = Listed {
            id,
            kind,
            status: "incomplete",
            latest: false,
            pointer: pointer.clone(),
            time: None,
            state_size: None,
            files: None,
            shared_files: None,
            slatedb_checkpoints: None,
            error: None,
        };
        if store.head(&dir.join(METADATA_FILE)?).await?.is_none() {
            // No metadata file, or something else in its place (a FIFO, a
            // link out of the directory): the latter is unreadable.
            if let Some(e) = metadata_in_the_way(store, &dir).await? {
                listed.status = "unreadable";
                listed.error = Some(e.to_string());
            }
            out.push((listed, Vec::new()));
            continue;
        }
        match storage.resolve(&pointer).await {
            Ok(resolved) => {
                let m = &resolved.metadata;
                listed.status = "complete";
                listed.id = Some(m.checkpoint_id);
                listed.kind = match m.kind {
                    CheckpointKind::Checkpoint => "checkpoint",
                    CheckpointKind::Savepoint => "savepoint",
                };
                listed.time = Some(utc(m.timestamp_millis));
                listed.state_size = Some(m.state_size());
                let files = m.file_paths();
                listed.files = Some(files.len());
                listed.slatedb_checkpoints = Some(
                    m.operators
                        .iter()
                        .flat_map(|o| &o.keyed)
                        .filter(|h| matches!(h, KeyedStateHandle::Incremental(i) if i.format == NativeFormat::SlateDb))
                        .count(),
                );
                out.push((listed, files));
            }
            Err(e) => {
                listed.status = "unreadable";
                listed.error = Some(e.to_string());
                out.push((listed, Vec::new()));
            }
        }
    }
    Ok(out)
}

/// The error of reading `dir/_metadata` when something that is not a
/// regular file stands where it should be; `None` when there is nothing.
async fn metadata_in_the_way(store: &Arc<dyn BlobStore>, dir: &BlobPath) -> Result<Option<Error>> {
    match store.get_range(&dir.join(METADATA_FILE)?, 0..1).await {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Ok(Some(e)),
        // Readable after all (written since it was looked for).
        Ok(_) => Ok(None),
    }
}

/// Lists checkpoints and savepoints.
pub async fn checkpoints(args: CheckpointsArgs) -> Result<Outcome> {
    let (store, storage) = storage_at(&args.target, &args.store)?;
    let mut rows = list_under(&store, &storage).await?;
    if let Some(sp) = &args.savepoints {
        let (store, storage) = storage_at(sp, &args.store)?;
        rows.extend(list_under(&store, &storage).await?.into_iter().filter(|(l, _)| {
            l.pointer
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("savepoint-"))
        }));
    }
    // Files referenced by more than one checkpoint (paths are relative to
    // the job directory, so only checkpoints of this job share them).
    let mut refs: HashMap<&str, usize> = HashMap::new();
    for (l, files) in &rows {
        if l.kind == "checkpoint" {
            for f in files {
                *refs.entry(f.as_str()).or_default() += 1;
            }
        }
    }
    let shared: Vec<Option<usize>> = rows
        .iter()
        .map(|(l, files)| {
            (l.status == "complete").then(|| {
                files
                    .iter()
                    .filter(|f| l.kind == "checkpoint" && refs[f.as_str()] > 1)
                    .count()
            })
        })
        .collect();
    let latest = rows
        .iter()
        .filter(|(l, _)| l.status == "complete" && l.kind == "checkpoint")
        .filter_map(|(l, _)| l.id)
        .max();
    let mut rows: Vec<Listed> = rows.into_iter().map(|(l, _)| l).collect();
    for (l, s) in rows.iter_mut().zip(shared) {
        l.shared_files = s;
        l.latest = l.kind == "checkpoint" && l.status == "complete" && l.id == latest;
    }
    let findings = rows.iter().any(|l| l.status == "unreadable");
    if args.store.json {
        println!("{}", json(&rows)?);
    } else {
        println!(
            "{:>6}  {:10}  {:18}  {:19}  {:>10}  {:>5}  {:>6}  {:>7}  where",
            "id", "kind", "status", "time (UTC)", "state", "files", "shared", "slatedb"
        );
        for l in &rows {
            let dash = || "-".to_string();
            let status = match (l.status, l.latest) {
                ("complete", true) => "complete, latest".to_string(),
                (s, _) => s.to_string(),
            };
            println!(
                "{:>6}  {:10}  {:18}  {:19}  {:>10}  {:>5}  {:>6}  {:>7}  {}",
                l.id.map_or_else(dash, |i| i.to_string()),
                l.kind,
                status,
                l.time.clone().unwrap_or_else(dash),
                l.state_size.map_or_else(dash, size),
                l.files.map_or_else(dash, |n| n.to_string()),
                l.shared_files.map_or_else(dash, |n| n.to_string()),
                l.slatedb_checkpoints.map_or_else(dash, |n| n.to_string()),
                l.pointer
            );
            if let Some(e) = &l.error {
                println!("        {e}");
            }
        }
        match latest {
            Some(id) => println!("latest complete checkpoint: {id}"),
            None => println!("no complete checkpoint"),
        }
    }
    Ok(if findings { Outcome::Findings } else { Outcome::Clean })
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::internal(format!("JSON output: {e}")))
}

// -------------------------------------------------------------------- inspect

/// `flowstate inspect`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  flowstate inspect /tmp/demo/checkpoints/flowstate-demo/chk-7\n  flowstate inspect \
                        s3://bucket/savepoints/savepoint-flowst-8-0a1b2c --verify"
)]
pub struct InspectArgs {
    /// A checkpoint (`.../chk-<n>`), a savepoint (`.../savepoint-...`) or
    /// their `_metadata` file, as a path or an object-store URL.
    pub pointer: String,
    /// Read every referenced file and check its size and checksums.
    #[arg(long)]
    pub verify: bool,
    /// Where the SlateDB backend's databases are (the directory or URL the
    /// database paths of its checkpoints are relative to), for `--verify`
    /// to check the SlateDB checkpoints there; for a checkpoint in a
    /// bucket, the bucket by default.
    #[arg(long, value_name = "DIR|URL")]
    pub slatedb: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Serialize)]
struct Inspected {
    pointer: String,
    metadata_version: u16,
    checkpoint_id: u64,
    kind: &'static str,
    time: String,
    state_size: u64,
    operators: Vec<InspectedOperator>,
    /// With `--verify`: each missing or damaged file (empty when whole).
    problems: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct InspectedOperator {
    id: String,
    parallelism: u32,
    max_parallelism: u32,
    states: Vec<InspectedState>,
    /// Why no snapshot header could be read (the states are then unknown).
    states_error: Option<String>,
    keyed: Vec<InspectedHandle>,
    operator_state: Vec<InspectedOperatorState>,
}

#[derive(Debug, Serialize)]
struct InspectedState {
    name: String,
    kind: String,
    namespace_serializer: String,
    value_serializer: String,
    user_key_serializer: Option<String>,
    ttl: bool,
}

#[derive(Debug, Serialize)]
struct InspectedHandle {
    /// `key-groups` (the canonical format) or `incremental` (RocksDB files).
    format: &'static str,
    key_groups: String,
    files: Vec<InspectedFile>,
    inline_bytes: u64,
    /// The SlateDB checkpoint a `slatedb` handle references
    /// (`<database>#<checkpoint>, manifest <n>`).
    slatedb_checkpoint: Option<String>,
}

#[derive(Debug, Serialize)]
struct InspectedFile {
    path: String,
    size: u64,
    crc32c: Option<String>,
    /// Referenced from `shared/` (reused across checkpoints).
    shared: bool,
}

#[derive(Debug, Serialize)]
struct InspectedOperatorState {
    subtask: u32,
    file: String,
    states: Vec<String>,
}

fn stream_file(stream: &StreamStateHandle, crc32c: Option<u32>) -> Option<InspectedFile> {
    match stream {
        StreamStateHandle::File { path, size } => Some(InspectedFile {
            path: path.clone(),
            size: *size,
            crc32c: crc32c.map(|c| format!("{c:08x}")),
            shared: path.starts_with(&format!("{SHARED_DIR}/")),
        }),
        _ => None,
    }
}

fn inline_bytes(stream: &StreamStateHandle) -> u64 {
    match stream {
        StreamStateHandle::Inline(b) => b.len() as u64,
        _ => 0,
    }
}

/// The header at the start of a canonical stream: the bytes before its
/// first key-group frame, by one ranged read.
async fn canonical_header(reader: &dyn StateReader, k: &KeyGroupsStateHandle) -> Result<SnapshotHeader> {
    let end = k
        .offsets
        .first()
        .copied()
        .unwrap_or(k.stream.size())
        .min(k.stream.size());
    let parts = reader.read_ranges(&k.stream, std::slice::from_ref(&(0..end))).await?;
    let head = parts.into_iter().next().unwrap_or_default();
    Ok(SnapshotHeader::decode(&head)?.0)
}

async fn header_of(reader: &dyn StateReader, h: &KeyedStateHandle) -> Result<Option<SnapshotHeader>> {
    match h {
        KeyedStateHandle::KeyGroups(k) if !matches!(k.stream, StreamStateHandle::Empty) => {
            Ok(Some(canonical_header(reader, k).await?))
        }
        KeyedStateHandle::Incremental(i) => {
            let data = reader.read(&i.meta).await?;
            Ok(Some(SnapshotHeader::decode(&data)?.0))
        }
        _ => Ok(None),
    }
}

/// Splits a pointer into the location its store is rooted at and the
/// checkpoint's directory name.
fn split_pointer(pointer: &str) -> Result<(String, String)> {
    let p = pointer.trim_end_matches('/');
    let p = p.strip_suffix(METADATA_FILE).unwrap_or(p).trim_end_matches('/');
    let p = if is_url(p) {
        p.to_string()
    } else {
        Path::new(p)
            .canonicalize()
            .map_err(|e| Error::io(pointer, e))?
            .display()
            .to_string()
    };
    match p.rsplit_once('/') {
        Some((parent, dir)) if !dir.is_empty() => {
            Ok((if parent.is_empty() { "/".into() } else { parent.into() }, dir.into()))
        }
        _ => Err(Error::invalid(format!("{pointer}: not a checkpoint or savepoint"))),
    }
}

/// Describes a checkpoint or savepoint, and with `--verify` checks it whole.
pub async fn inspect(args: InspectArgs) -> Result<Outcome> {
    let (parent, dir) = split_pointer(&args.pointer)?;
    let (store, storage) = storage_at(&parent, &args.store)?;
    let pointer = format!("{}/{dir}", store.root().trim_end_matches('/'));
    let resolved = storage.resolve(&pointer).await?;
    let metadata_path = BlobPath::new(&dir)?.join(METADATA_FILE)?;
    let head = store.get_range(&metadata_path, 0..6).await?;
    let metadata_version = match head.get(4..6) {
        Some(v) => u16::from_le_bytes([v[0], v[1]]),
        None => 0,
    };
    let m = &resolved.metadata;
    let reader = &*resolved.reader;
    let mut operators = Vec::new();
    for op in &m.operators {
        // The states, from the first snapshot header that reads; a damaged
        // file is reported (and named by `--verify`), not fatal.
        let mut states = Vec::new();
        let mut states_error = None;
        for h in &op.keyed {
            let header = match header_of(reader, h).await {
                Ok(header) => header,
                Err(e) => {
                    states_error.get_or_insert_with(|| e.to_string());
                    continue;
                }
            };
            if let Some(header) = header {
                states_error = None;
                states = header
                    .states
                    .iter()
                    .map(|s| InspectedState {
                        name: s.name.clone(),
                        kind: s.kind.to_string(),
                        namespace_serializer: s.namespace_serializer.to_string(),
                        value_serializer: s.value_serializer.to_string(),
                        user_key_serializer: s.user_key_serializer.as_ref().map(|s| s.to_string()),
                        ttl: s.ttl,
                    })
                    .collect();
                break;
            }
        }
        let keyed = op
            .keyed
            .iter()
            .map(|h| match h {
                KeyedStateHandle::KeyGroups(k) => InspectedHandle {
                    format: "key-groups",
                    key_groups: k.range.to_string(),
                    files: stream_file(&k.stream, None).into_iter().collect(),
                    inline_bytes: inline_bytes(&k.stream),
                    slatedb_checkpoint: None,
                },
                KeyedStateHandle::Incremental(i) => InspectedHandle {
                    format: match i.format {
                        NativeFormat::RocksDb => "incremental",
                        NativeFormat::HeapChain => "heap-chain",
                        NativeFormat::SlateDb => "slatedb",
                    },
                    key_groups: i.range.to_string(),
                    files: i
                        .shared
                        .iter()
                        .chain(&i.private)
                        .filter_map(|f| stream_file(&f.stream, Some(f.crc32c)))
                        .chain(stream_file(&i.meta, None))
                        .collect(),
                    inline_bytes: i
                        .shared
                        .iter()
                        .chain(&i.private)
                        .map(|f| inline_bytes(&f.stream))
                        .sum::<u64>()
                        + inline_bytes(&i.meta),
                    slatedb_checkpoint: None,
                },
                other => InspectedHandle {
                    format: "unknown",
                    key_groups: other.key_group_range().to_string(),
                    files: Vec::new(),
                    inline_bytes: 0,
                    slatedb_checkpoint: None,
                },
            })
            .collect::<Vec<_>>();
        let mut keyed = keyed;
        for (h, inspected) in op.keyed.iter().zip(keyed.iter_mut()) {
            if let KeyedStateHandle::Incremental(i) = h {
                if i.format == NativeFormat::SlateDb {
                    inspected.slatedb_checkpoint = Some(match crate::slatedb::reference(reader, i).await {
                        Ok(r) => format!("{}#{}, manifest {}", r.db_path, r.checkpoint_uuid(), r.manifest_id),
                        Err(e) => format!("unreadable: {e}"),
                    });
                }
            }
        }
        let operator_state = op
            .operator_state
            .iter()
            .map(|h| InspectedOperatorState {
                subtask: h.subtask_index,
                file: h.stream.describe(),
                states: h
                    .states
                    .iter()
                    .map(|b| format!("{} ({:?}, {} entries)", b.name, b.mode, b.entries))
                    .collect(),
            })
            .collect();
        operators.push(InspectedOperator {
            id: op.operator_id.clone(),
            parallelism: op.parallelism,
            max_parallelism: op.max_parallelism,
            states,
            states_error,
            keyed,
            operator_state,
        });
    }
    let mut unchecked = false;
    let problems = if args.verify {
        let mut problems = verify(m, reader).await;
        let databases =
            crate::slatedb::Databases::locate(args.slatedb.as_deref(), &parent, &args.store.storage_options)?;
        match crate::slatedb::verify(m, reader, databases.as_ref()).await {
            Some(p) => problems.extend(p),
            None => unchecked = true,
        }
        Some(problems)
    } else {
        None
    };
    let report = Inspected {
        pointer: resolved.pointer.clone(),
        metadata_version,
        checkpoint_id: m.checkpoint_id,
        kind: match m.kind {
            CheckpointKind::Checkpoint => "checkpoint",
            CheckpointKind::Savepoint => "savepoint",
        },
        time: utc(m.timestamp_millis),
        state_size: m.state_size(),
        operators,
        problems,
    };
    let findings = report.problems.as_ref().is_some_and(|p| !p.is_empty());
    if args.store.json {
        println!("{}", json(&report)?);
    } else {
        print_inspected(&report);
    }
    if unchecked {
        eprintln!(
            "note: the SlateDB checkpoints this references were not looked for in their databases: pass --slatedb \
             DIR (where the SlateDB backend keeps them)"
        );
    }
    Ok(if findings { Outcome::Findings } else { Outcome::Clean })
}

fn print_inspected(r: &Inspected) {
    println!("{} {} ({})", r.kind, r.checkpoint_id, r.pointer);
    println!(
        "  metadata format version {}, taken {} UTC, state {}",
        r.metadata_version,
        r.time,
        size(r.state_size)
    );
    for op in &r.operators {
        println!(
            "  operator {:?}: parallelism {}, max parallelism {}",
            op.id, op.parallelism, op.max_parallelism
        );
        if let Some(e) = &op.states_error {
            println!("    states unknown: no snapshot header could be read: {e}");
        }
        for s in &op.states {
            let user_key = s
                .user_key_serializer
                .as_ref()
                .map(|u| format!(", user keys {u}"))
                .unwrap_or_default();
            let ttl = if s.ttl { ", TTL" } else { "" };
            println!(
                "    state {:?}: {}, namespace {}, values {}{user_key}{ttl}",
                s.name, s.kind, s.namespace_serializer, s.value_serializer
            );
        }
        for h in &op.keyed {
            println!(
                "    keyed state, key groups {} ({}), {} files, {} inline bytes",
                h.key_groups,
                h.format,
                h.files.len(),
                h.inline_bytes
            );
            for f in &h.files {
                let crc = f.crc32c.as_ref().map(|c| format!("  crc32c {c}")).unwrap_or_default();
                println!("      {:>10}  {}{crc}", size(f.size), f.path);
            }
            if let Some(c) = &h.slatedb_checkpoint {
                println!("      SlateDB checkpoint {c}");
            }
        }
        for o in &op.operator_state {
            println!(
                "    operator state of subtask {} ({}): {}",
                o.subtask,
                o.file,
                o.states.join(", ")
            );
        }
    }
    if let Some(problems) = &r.problems {
        if problems.is_empty() {
            println!("verified: every referenced file is present, of its size, and its checksums match");
        } else {
            println!("verification FAILED: {} problems", problems.len());
            for p in problems {
                println!("  {p}");
            }
        }
    }
}

/// Bytes asked for per ranged read while verifying: memory stays bounded by
/// this (or by one key-group frame or operator-state block, if larger),
/// whatever the size of the files.
const VERIFY_CHUNK: u64 = 8 << 20;

/// Reads every file `m` references, in ranges, and checks sizes and
/// checksums; returns one line per missing or damaged file.
async fn verify(m: &CheckpointMetadata, reader: &dyn StateReader) -> Vec<String> {
    let mut problems = Vec::new();
    for op in &m.operators {
        for h in &op.keyed {
            match h {
                KeyedStateHandle::KeyGroups(k) => {
                    if let Err(e) = verify_canonical(reader, k, op.max_parallelism, VERIFY_CHUNK).await {
                        problems.push(format!("{}: {e}", k.stream.describe()));
                    }
                }
                KeyedStateHandle::Incremental(i) => {
                    for f in i.shared.iter().chain(&i.private) {
                        match checksum(reader, &f.stream, VERIFY_CHUNK).await {
                            Ok(crc) if crc != f.crc32c => {
                                problems.push(format!("{}: CRC-32C does not match the metadata", f.stream.describe()))
                            }
                            Ok(_) => {}
                            Err(e) => problems.push(format!("{}: {e}", f.stream.describe())),
                        }
                    }
                    let header = reader
                        .read(&i.meta)
                        .await
                        .and_then(|data| SnapshotHeader::decode(&data).map(|_| ()));
                    if let Err(e) = header {
                        problems.push(format!("{}: {e}", i.meta.describe()));
                    } else if i.format == NativeFormat::HeapChain {
                        if let Err(e) = flowstate_heap::verify_chain(i, reader).await {
                            problems.push(format!("{}: {e}", i.meta.describe()));
                        }
                    } else if i.format == NativeFormat::SlateDb {
                        // The reference to the SlateDB checkpoint, checksummed
                        // after the header.
                        let name = i.meta.describe();
                        let reference = reader
                            .read(&i.meta)
                            .await
                            .and_then(|data| flowstate_slatedb::decode_meta(&data, &name).map(drop));
                        if let Err(e) = reference {
                            problems.push(format!("{name}: {e}"));
                        }
                    }
                }
                other => problems.push(format!(
                    "key groups {}: a kind of state handle this version cannot check",
                    other.key_group_range()
                )),
            }
        }
        for h in &op.operator_state {
            if let Err(e) = verify_operator_state(reader, h).await {
                problems.push(format!("{}: {e}", h.stream.describe()));
            }
        }
    }
    problems
}

/// The CRC-32C of a whole stream, read `chunk` bytes at a time; an error if
/// the file is shorter or longer than its handle says.
async fn checksum(reader: &dyn StateReader, stream: &StreamStateHandle, chunk: u64) -> Result<u32> {
    let size = stream.size();
    let mut crc = 0;
    let mut at = 0;
    while at < size {
        let end = size.min(at.saturating_add(chunk.max(1)));
        for part in reader.read_ranges(stream, std::slice::from_ref(&(at..end))).await? {
            crc = crc32c::crc32c_append(crc, &part);
        }
        at = end;
    }
    check_ends_at_size(reader, stream).await?;
    Ok(crc)
}

/// Refuses a file that holds more bytes than its handle says: a one-byte
/// read past the declared end must find nothing. (A shorter file fails the
/// ranged reads before this.)
async fn check_ends_at_size(reader: &dyn StateReader, stream: &StreamStateHandle) -> Result<()> {
    let StreamStateHandle::File { path, size } = stream else {
        return Ok(());
    };
    let Some(past) = size.checked_add(1) else {
        return Ok(());
    };
    let probe = StreamStateHandle::File {
        path: path.clone(),
        size: past,
    };
    match reader.read_ranges(&probe, std::slice::from_ref(&(*size..past))).await {
        Ok(parts) if parts.iter().any(|p| !p.is_empty()) => Err(Error::corrupted(format!(
            "holds more than the {size} bytes the metadata says"
        ))),
        Ok(_) => Ok(()),
        // The storage reports the file ending before the probed byte.
        Err(e) if e.kind() == ErrorKind::Corrupted => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks an operator-state stream block by block, each by one ranged read.
async fn verify_operator_state(reader: &dyn StateReader, h: &OperatorStateHandle) -> Result<()> {
    let size = h.stream.size();
    for b in &h.states {
        let end = b
            .offset
            .checked_add(b.length)
            .filter(|end| *end <= size)
            .ok_or_else(|| Error::corrupted(format!("state {:?} lies past the stream's {size} bytes", b.name)))?;
        let parts = reader
            .read_ranges(&h.stream, std::slice::from_ref(&(b.offset..end)))
            .await?;
        let crc = parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p));
        if crc != b.crc32c {
            return Err(Error::corrupted(format!(
                "state {:?}: CRC-32C does not match the metadata",
                b.name
            )));
        }
    }
    check_ends_at_size(reader, &h.stream).await
}

/// Reads a canonical snapshot a run of key groups at a time (one ranged read
/// of about `chunk` bytes each, plus the header) and checks every key group's
/// frame and records, then that the file ends where its handle says.
async fn verify_canonical(
    reader: &dyn StateReader,
    k: &KeyGroupsStateHandle,
    max_parallelism: u32,
    chunk: u64,
) -> Result<()> {
    if matches!(k.stream, StreamStateHandle::Empty) {
        return Ok(());
    }
    let name = k.stream.describe();
    let range = k.range;
    let offsets = &k.offsets;
    let mut first = 0usize;
    loop {
        // Key groups [first, last) of the handle: at least one, and as many
        // more as start within `chunk` bytes of the first.
        let start = offsets.get(first).copied().unwrap_or_default();
        let mut last = first + 1;
        while last < offsets.len() && offsets[last].saturating_sub(start) < chunk {
            last += 1;
        }
        let last = last.min(range.len() as usize);
        let want = KeyGroupRange::new(range.start() + first as u32, range.start() + last as u32)?;
        let (snapshot, _) = CanonicalSnapshot::read(reader, k, want, &name).await?;
        for kg in want.iter() {
            snapshot.key_group(kg)?.for_each_verified(max_parallelism, |_| Ok(()))?;
        }
        if last >= range.len() as usize {
            break;
        }
        first = last;
    }
    check_ends_at_size(reader, &k.stream).await
}

// ------------------------------------------------------------------------- gc

/// `flowstate gc`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  flowstate gc /tmp/demo/checkpoints/flowstate-demo\n  flowstate gc \
                        s3://bucket/checkpoints/my-job --min-age 2h --delete"
)]
pub struct GcArgs {
    /// The job's checkpoint directory, or its object-store URL.
    pub target: String,
    /// Delete the orphans (without it, only lists them).
    #[arg(long)]
    pub delete: bool,
    /// Leave files younger than this alone (`90s`, `30m`, `2h`, `1d`): they
    /// may belong to a checkpoint still being written.
    #[arg(long, default_value = "1h", value_parser = parse_age)]
    pub min_age: Duration,
    /// Where the SlateDB backend's databases are (the directory or URL the
    /// database paths of its checkpoints are relative to): releases the
    /// SlateDB checkpoints no retained checkpoint references, deletes the
    /// databases nothing needs (those of failed attempts) and runs
    /// SlateDB's collector on the others; databases written within
    /// `--min-age` are left alone. For checkpoints in a bucket, the bucket
    /// by default.
    #[arg(long, value_name = "DIR|URL")]
    pub slatedb: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Parses `<number><s|m|h|d>` (a bare number is seconds).
fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 30m, 2h or 1d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Debug, Serialize)]
struct GcOutput {
    deleted: bool,
    orphans: Vec<GcFile>,
    bytes: u64,
    metadata_read: usize,
    /// The SlateDB backends' databases, per base path.
    slatedb: Vec<crate::slatedb::Collected>,
}

#[derive(Debug, Serialize)]
struct GcFile {
    path: String,
    size: u64,
}

/// Finds (and with `--delete` deletes) files no checkpoint references.
pub async fn gc(args: GcArgs) -> Result<Outcome> {
    let (_, storage) = storage_at(&args.target, &args.store)?;
    let store = CheckpointStore::open(Arc::clone(&storage), CheckpointStoreConfig::default()).await?;
    let mut options = GcOptions::new(args.min_age);
    if args.delete {
        options = options.delete();
    }
    let report = store.collect_garbage(&options).await?;
    let mut retained = Vec::new();
    for c in store.retained() {
        let resolved = storage.resolve(&c.pointer).await?;
        retained.push((Arc::clone(&c.metadata), resolved.reader));
    }
    let slatedb =
        match crate::slatedb::Databases::locate(args.slatedb.as_deref(), &args.target, &args.store.storage_options)? {
            Some(databases) => crate::slatedb::collect(&databases, &retained, &options).await?,
            None => {
                let n = crate::slatedb::count_handles(&retained);
                if n > 0 {
                    eprintln!(
                        "note: {n} SlateDB checkpoints are referenced; pass --slatedb DIR (where the SlateDB backend \
                     keeps its databases) to collect those databases too"
                    );
                }
                Vec::new()
            }
        };
    let out = GcOutput {
        deleted: report.deleted,
        orphans: report
            .orphans
            .iter()
            .map(|f| GcFile {
                path: f.path.clone(),
                size: f.size,
            })
            .collect(),
        bytes: report.bytes,
        metadata_read: report.metadata_read,
        slatedb,
    };
    if args.store.json {
        println!("{}", json(&out)?);
    } else {
        for f in &out.orphans {
            println!("{:>10}  {}", size(f.size), f.path);
        }
        let verb = if out.deleted {
            "deleted"
        } else {
            "would delete (dry run; --delete deletes)"
        };
        println!(
            "{verb}: {} orphaned files, {}; {} metadata files read",
            out.orphans.len(),
            size(out.bytes),
            out.metadata_read
        );
        for c in &out.slatedb {
            let list = |what: &str, items: &[String]| {
                for i in items {
                    println!("  {what}  {i}");
                }
            };
            println!("SlateDB databases under {}:", c.base);
            list("released", &c.released_checkpoints);
            list("deleted ", &c.deleted_databases);
            list("collected", &c.collected_databases);
            list("read by a clone", &c.read_by_clones);
            list("recently written", &c.recently_written);
            println!(
                "{verb}: {} SlateDB checkpoints, {} databases",
                c.released_checkpoints.len(),
                c.deleted_databases.len()
            );
        }
    }
    let slatedb_left = !out.deleted && out.slatedb.iter().any(|c| c.removes_something());
    Ok(if (out.orphans.is_empty() && !slatedb_left) || out.deleted {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gc` and `inspect` on the SlateDB backend's databases.
    mod slatedb_databases {
        use super::super::*;
        use flowstate_api::checkpoint::OperatorState;
        use flowstate_api::{
            AsyncKeyedStateBackend, CheckpointKind, CheckpointStore, CheckpointStoreConfig, KeyGroupRange,
            KeyedBackendConfig, RecordCtx, SnapshotOptions, ValueStateDescriptor,
        };
        use flowstate_object::object_store::ObjectStore;
        use flowstate_object::LocalFiles;
        use flowstate_slatedb::SlateDbBackend;
        use flowstate_slatedb::SlateDbOptions;
        use std::time::Duration;

        async fn write(b: &Arc<SlateDbBackend<u64>>, round: u64) {
            let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
            for k in 0..100u64 {
                RecordCtx::for_key(Arc::clone(b), &k)
                    .unwrap()
                    .update(&v, round)
                    .await
                    .unwrap();
            }
        }

        async fn complete(store: &mut CheckpointStore, b: &SlateDbBackend<u64>, id: u64) {
            let location = store.begin_checkpoint(id).await.unwrap();
            let result = b
                .snapshot(id, Arc::clone(&location), SnapshotOptions::checkpoint())
                .await
                .unwrap()
                .await
                .unwrap();
            let m = CheckpointMetadata::new(id, CheckpointKind::Checkpoint, 0).with_operator(OperatorState::new(
                "op",
                1,
                128,
                vec![result.handle],
            ));
            store.complete(&location, m).await.unwrap();
            b.notify_checkpoint_complete(id).await.unwrap();
        }

        /// Files (not directories) under `dir`.
        fn files_under(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 })
                    .sum()
            })
        }

        /// Names of the SlateDB checkpoints of the database at `path`.
        async fn names(store: &Arc<dyn ObjectStore>, path: &str) -> Vec<Option<String>> {
            let admin = slatedb_admin(store, path);
            admin
                .list_checkpoints(None)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.name)
                .collect()
        }

        fn slatedb_admin(store: &Arc<dyn ObjectStore>, path: &str) -> flowstate_slatedb::slatedb::admin::Admin {
            flowstate_slatedb::slatedb::admin::AdminBuilder::new(path, Arc::clone(store)).build()
        }

        /// `gc --slatedb` releases the SlateDB checkpoint of a subsumed
        /// checkpoint that no one released and deletes a dead attempt's
        /// database (a dry run only reports them, as findings); `inspect
        /// --verify --slatedb` finds the retained checkpoint's SlateDB
        /// checkpoint in its database, refuses a manifest that is a link out
        /// of the directory, and names the checkpoint once it is gone.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn gc_and_verify_know_the_slatedb_databases() {
            let dir = tempfile::tempdir().unwrap();
            let databases = dir.path().join("slatedb");
            std::fs::create_dir(&databases).unwrap();
            let store: Arc<dyn ObjectStore> = Arc::new(LocalFiles::new_with_prefix(&databases).unwrap());
            let options = SlateDbOptions::new(Arc::clone(&store), "job/op")
                .unwrap()
                .with_boundary_files(false);
            let config = || KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128);

            // A dead attempt wrote its database and never checkpointed.
            let dead = Arc::new(SlateDbBackend::open(options.clone(), config()).await.unwrap());
            write(&dead, 0).await;
            dead.db().flush().await.unwrap();
            let dead_path = dead.path().to_string();
            dead.close().await.unwrap();

            // The next attempt completes checkpoints 1 and 2 through a store
            // that releases no SlateDB checkpoint.
            let storage = Arc::new(flowstate_fs::checkpoint_storage(dir.path().join("checkpoints"), "job").unwrap());
            let mut checkpoints = CheckpointStore::open(storage, CheckpointStoreConfig::default())
                .await
                .unwrap();
            let live = Arc::new(SlateDbBackend::open(options.clone(), config()).await.unwrap());
            write(&live, 1).await;
            complete(&mut checkpoints, &live, 1).await;
            write(&live, 2).await;
            complete(&mut checkpoints, &live, 2).await;
            let live_path = live.path().to_string();
            live.close().await.unwrap();
            assert_eq!(names(&store, &live_path).await.len(), 2);

            let job = dir.path().join("checkpoints").join("job");
            let args = |delete: bool| GcArgs {
                target: job.display().to_string(),
                delete,
                min_age: Duration::ZERO,
                slatedb: Some(databases.display().to_string()),
                store: StoreArgs::default(),
            };
            assert_eq!(gc(args(false)).await.unwrap(), Outcome::Findings);
            assert!(
                files_under(&databases.join(&dead_path)) > 0,
                "a dry run deletes nothing"
            );
            assert_eq!(names(&store, &live_path).await.len(), 2);
            assert_eq!(gc(args(true)).await.unwrap(), Outcome::Clean);
            assert_eq!(
                files_under(&databases.join(&dead_path)),
                0,
                "the dead attempt's database is gone"
            );
            assert_eq!(names(&store, &live_path).await, [Some("flowstate:2".to_string())]);

            let verify = |slatedb: Option<&std::path::Path>| InspectArgs {
                pointer: job.join("chk-2").display().to_string(),
                verify: true,
                slatedb: slatedb.map(|p| p.display().to_string()),
                store: StoreArgs::default(),
            };
            assert_eq!(inspect(verify(Some(&databases))).await.unwrap(), Outcome::Clean);
            // The newest manifest replaced by a link to a copy outside the
            // directory is a finding: only regular files are read there.
            let manifests = databases.join(&live_path).join("manifest");
            let newest = std::fs::read_dir(&manifests)
                .unwrap()
                .map(|e| e.unwrap().path())
                .max()
                .unwrap();
            let outside = dir.path().join("elsewhere.manifest");
            std::fs::rename(&newest, &outside).unwrap();
            std::os::unix::fs::symlink(&outside, &newest).unwrap();
            assert_eq!(inspect(verify(Some(&databases))).await.unwrap(), Outcome::Findings);
            std::fs::remove_file(&newest).unwrap();
            std::fs::rename(&outside, &newest).unwrap();
            let admin = slatedb_admin(&store, &live_path);
            for c in admin.list_checkpoints(None).await.unwrap() {
                admin.delete_checkpoint(c.id).await.unwrap();
            }
            assert_eq!(inspect(verify(Some(&databases))).await.unwrap(), Outcome::Findings);
            // Without `--slatedb` only the reference itself is checked.
            assert_eq!(inspect(verify(None)).await.unwrap(), Outcome::Clean);
        }
    }

    #[test]
    fn civil_time_of_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_306_261_000), "2026-11-22 00:11:01");
    }

    #[test]
    fn ages_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_age("1w").is_err());
        assert!(parse_age("h").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }

    #[test]
    fn sizes_read_at_a_glance() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn pointers_split_into_root_and_directory() {
        assert_eq!(
            split_pointer("s3://b/jobs/j/chk-3/_metadata").unwrap(),
            ("s3://b/jobs/j".to_string(), "chk-3".to_string())
        );
        assert_eq!(
            split_pointer("s3://b/sp/savepoint-x/").unwrap(),
            ("s3://b/sp".to_string(), "savepoint-x".to_string())
        );
        assert!(split_pointer("/definitely/not/here/chk-1").is_err());
    }

    /// Counts the ranged reads and the largest one.
    #[derive(Debug)]
    struct CountingReader {
        inner: Arc<dyn StateReader>,
        reads: std::sync::atomic::AtomicU64,
        largest: std::sync::atomic::AtomicU64,
    }

    #[async_trait::async_trait]
    impl StateReader for CountingReader {
        async fn read(&self, handle: &StreamStateHandle) -> Result<bytes::Bytes> {
            self.largest
                .fetch_max(handle.size(), std::sync::atomic::Ordering::SeqCst);
            self.inner.read(handle).await
        }
        async fn read_ranges(
            &self,
            handle: &StreamStateHandle,
            ranges: &[std::ops::Range<u64>],
        ) -> Result<Vec<bytes::Bytes>> {
            for r in ranges {
                self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.largest
                    .fetch_max(r.end - r.start, std::sync::atomic::Ordering::SeqCst);
            }
            self.inner.read_ranges(handle, ranges).await
        }
    }

    /// A full heap snapshot of 5,000 keys over 128 key groups in a file.
    async fn snapshot_file(dir: &Path) -> (KeyGroupsStateHandle, Arc<dyn StateReader>, std::path::PathBuf) {
        let storage = flowstate_fs::checkpoint_storage(dir, "job").unwrap();
        let mut b =
            flowstate_heap::HeapBackend::new(KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128))
                .unwrap();
        let v = b.register(ValueStateDescriptor::<Vec<u8>>::new("v")).unwrap();
        for k in 0..5_000u64 {
            b.set_current_key(&k).unwrap();
            b.update(&v, vec![k as u8; 64]).unwrap();
        }
        let location = storage.init_checkpoint(1).await.unwrap();
        let result = b
            .snapshot(1, location.clone(), SnapshotOptions::checkpoint())
            .unwrap()
            .await
            .unwrap();
        let mut m = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0);
        m.operators
            .push(OperatorState::new("op", 1, 128, vec![result.handle.clone()]));
        let pointer = location.write_metadata(&m).await.unwrap();
        let reader = storage.resolve(&pointer).await.unwrap().reader;
        let KeyedStateHandle::KeyGroups(k) = result.handle else {
            panic!("a heap checkpoint is canonical: {:?}", result.handle)
        };
        let path = dir.join("job").join(k.stream.file_path().unwrap());
        (k, reader, path)
    }

    /// A SlateDB checkpoint verifies: its handle's metadata is the header
    /// and the checksummed reference to the SlateDB checkpoint; a damaged
    /// reference is named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_checks_a_slatedb_checkpoints_reference() {
        use flowstate_api::AsyncKeyedStateBackend;
        let store: Arc<dyn flowstate_object::object_store::ObjectStore> =
            Arc::new(flowstate_object::object_store::memory::InMemory::new());
        let options = flowstate_slatedb::SlateDbOptions::new(store, "job/slatedb/op").unwrap();
        let config = KeyedBackendConfig::<u64>::new(KeyGroupRange::all(128).unwrap(), 128);
        let b = Arc::new(flowstate_slatedb::SlateDbBackend::open(options, config).await.unwrap());
        let v = b.register(ValueStateDescriptor::<u64>::new("v")).unwrap();
        flowstate_api::RecordCtx::for_key(Arc::clone(&b), &7)
            .unwrap()
            .update(&v, 1)
            .await
            .unwrap();
        let storage = CheckpointStorage::in_memory("job");
        let location = storage.init_checkpoint(1).await.unwrap();
        let result = b
            .snapshot(1, location.clone(), SnapshotOptions::checkpoint())
            .await
            .unwrap()
            .await
            .unwrap();
        let reader: Arc<dyn StateReader> = Arc::new(flowstate_api::checkpoint::InlineReader);
        let metadata = |handle: KeyedStateHandle| {
            let mut m = CheckpointMetadata::new(1, CheckpointKind::Checkpoint, 0);
            m.operators.push(OperatorState::new("op", 1, 128, vec![handle]));
            m
        };
        assert_eq!(
            verify(&metadata(result.handle.clone()), &*reader).await,
            Vec::<String>::new()
        );
        let KeyedStateHandle::Incremental(mut h) = result.handle else {
            panic!("a SlateDB checkpoint is native: {:?}", result.handle)
        };
        let StreamStateHandle::Inline(bytes) = &h.meta else {
            panic!("the reference is inline: {:?}", h.meta)
        };
        let mut damaged = bytes.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        h.meta = StreamStateHandle::Inline(damaged.into());
        let problems = verify(&metadata(KeyedStateHandle::Incremental(h)), &*reader).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("SlateDB"), "{problems:?}");
        b.close().await.unwrap();
    }

    #[tokio::test]
    async fn verify_reads_a_canonical_snapshot_in_bounded_ranges_and_names_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (k, inner, path) = snapshot_file(dir.path()).await;
        let size = k.stream.size();
        assert!(size > 100_000, "{size}");
        let reader = CountingReader {
            inner: inner.clone(),
            reads: 0.into(),
            largest: 0.into(),
        };
        verify_canonical(&reader, &k, 128, 16 << 10).await.unwrap();
        let reads = reader.reads.load(std::sync::atomic::Ordering::SeqCst);
        let largest = reader.largest.load(std::sync::atomic::Ordering::SeqCst);
        assert!(reads >= size / (16 << 10), "{reads} reads of a {size}-byte file");
        assert!(largest < 32 << 10, "a read of {largest} bytes");
        // One chunk as large as the file reads it whole; the result is the same.
        verify_canonical(&*inner, &k, 128, u64::MAX).await.unwrap();
        // A wrong max parallelism puts keys in the wrong key groups.
        assert!(verify_canonical(&*inner, &k, 256, 16 << 10).await.is_err());

        let original = std::fs::read(&path).unwrap();
        // A flipped byte in the last key group's frame.
        let mut bytes = original.clone();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let e = verify_canonical(&*inner, &k, 128, 16 << 10).await.unwrap_err();
        assert!(e.to_string().contains("key group 127"), "{e}");
        // A byte appended: longer than the metadata says.
        let mut bytes = original.clone();
        bytes.push(0);
        std::fs::write(&path, &bytes).unwrap();
        let e = verify_canonical(&*inner, &k, 128, 16 << 10).await.unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let e = checksum(&*inner, &k.stream, 1000).await.unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        // Truncated.
        std::fs::write(&path, &original[..original.len() - 10]).unwrap();
        let e = verify_canonical(&*inner, &k, 128, 16 << 10).await.unwrap_err();
        assert!(e.to_string().contains(k.stream.file_path().unwrap()), "{e}");
        assert!(checksum(&*inner, &k.stream, 1000).await.is_err());
        // Whole again: the chunked checksum is the file's.
        std::fs::write(&path, &original).unwrap();
        assert_eq!(
            checksum(&*inner, &k.stream, 1000).await.unwrap(),
            crc32c::crc32c(&original)
        );
    }
}

// ------------------------------------------------------------------ savepoint

/// `flowstate savepoint convert`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  flowstate savepoint convert /data/checkpoints/my-job/chk-42 /data/savepoints\n  flowstate \
                        savepoint convert s3://bucket/checkpoints/my-job/chk-42 s3://bucket/savepoints"
)]
pub struct ConvertArgs {
    /// The checkpoint or savepoint to rewrite (path or URL).
    pub source: String,
    /// The directory (or URL) to create the savepoint in.
    pub target: String,
    /// Refuse unless the state was written at this max parallelism (the
    /// number of key groups, fixed for the life of a job's state).
    #[arg(long)]
    pub max_parallelism: Option<u32>,
    /// Where RocksDB files are put while converting (default: a temporary
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Refuses a savepoint target inside a checkpoint directory (`…/chk-<n>/…`):
/// the lifecycle deletes that directory, and a savepoint in it, once a newer
/// checkpoint subsumes its checkpoint.
fn outside_checkpoints(target: &str) -> Result<()> {
    match target.split('/').find(|c| checkpoint_dir_id(c).is_some()) {
        Some(dir) => Err(Error::invalid(format!(
            "savepoint target {target}: lies inside the checkpoint directory {dir}, which is deleted with its \
             checkpoint; choose a directory of its own (e.g. a savepoints/ beside the job's directory)"
        ))),
        None => Ok(()),
    }
}

/// Copies one stream into a new exclusive stream of `location` (inline and
/// empty streams stay in the metadata).
async fn copy_stream(
    stream: &StreamStateHandle,
    reader: &dyn StateReader,
    location: &CheckpointLocation,
) -> Result<StreamStateHandle> {
    if !matches!(stream, StreamStateHandle::File { .. }) {
        return Ok(stream.clone());
    }
    let data = reader.read(stream).await.map_err(|e| e.context(stream.describe()))?;
    let mut out = location.create_output_stream(StateScope::Exclusive).await?;
    out.write_bytes(data).await?;
    let copied = out.close().await?;
    if copied.size() != stream.size() {
        return Err(Error::corrupted(format!(
            "{}: {} bytes read, the metadata says {}",
            stream.describe(),
            copied.size(),
            stream.size()
        )));
    }
    Ok(copied)
}

/// Rewrites a checkpoint or savepoint as a self-contained canonical
/// savepoint; prints its pointer.
pub async fn convert(args: ConvertArgs) -> Result<Outcome> {
    let (parent, dir) = split_pointer(&args.source)?;
    let (_, storage) = storage_at(&parent, &args.store)?;
    let source_pointer = format!("{parent}/{dir}");
    let resolved = storage.resolve(&source_pointer).await?;
    let m = &resolved.metadata;
    if let Some(want) = args.max_parallelism {
        if let Some(op) = m.operators.iter().find(|op| op.max_parallelism != want) {
            return Err(Error::invalid(format!(
                "{}: operator {:?} has max parallelism {}, not {want}; a key's key group depends on it, so state \
                 cannot move to another max parallelism",
                resolved.pointer, op.operator_id, op.max_parallelism
            )));
        }
    }
    let target = if is_url(&args.target) {
        let target = args.target.trim_end_matches('/').to_string();
        outside_checkpoints(&target)?;
        target
    } else {
        let absolute = std::path::absolute(&args.target).map_err(|e| Error::io(&args.target, e))?;
        outside_checkpoints(&absolute.display().to_string())?;
        std::fs::create_dir_all(&args.target).map_err(|e| Error::io(&args.target, e))?;
        let target = Path::new(&args.target)
            .canonicalize()
            .map_err(|e| Error::io(&args.target, e))?
            .display()
            .to_string();
        // Through a symlink, too.
        outside_checkpoints(&target)?;
        target
    };
    let (_, out_storage) = storage_at(&target, &args.store)?;
    let location = out_storage.init_savepoint(m.checkpoint_id, Some(&target)).await?;
    let work = tempfile::Builder::new()
        .prefix("flowstate-convert-")
        .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(|e| Error::io("a temporary directory", e))?;
    let rocks = flowstate_rocksdb::RocksDbOptions::new(work.path());
    let reader = &*resolved.reader;
    let result = async {
        let mut operators = Vec::new();
        for op in &m.operators {
            let mut keyed = Vec::new();
            for h in &op.keyed {
                keyed.push(match h {
                    KeyedStateHandle::KeyGroups(k) => KeyedStateHandle::KeyGroups(KeyGroupsStateHandle {
                        range: k.range,
                        offsets: k.offsets.clone(),
                        stream: copy_stream(&k.stream, reader, &location).await?,
                    }),
                    KeyedStateHandle::Incremental(i) if i.format == NativeFormat::HeapChain => {
                        KeyedStateHandle::KeyGroups(flowstate_heap::chain_to_canonical(i, reader, &location).await?)
                    }
                    KeyedStateHandle::Incremental(i) => KeyedStateHandle::KeyGroups(
                        flowstate_rocksdb::incremental_to_canonical(i, reader, &location, &rocks).await?,
                    ),
                    other => {
                        return Err(Error::unsupported(format!(
                            "key groups {}: a kind of state handle this version cannot convert",
                            other.key_group_range()
                        )))
                    }
                });
            }
            let mut operator_state = Vec::new();
            for h in &op.operator_state {
                let mut copy = h.clone();
                copy.stream = copy_stream(&h.stream, reader, &location).await?;
                operator_state.push(copy);
            }
            operators.push(
                OperatorState::new(&op.operator_id, op.parallelism, op.max_parallelism, keyed)
                    .with_operator_state(operator_state),
            );
        }
        let mut metadata = CheckpointMetadata::new(m.checkpoint_id, CheckpointKind::Savepoint, m.timestamp_millis);
        metadata.operators = operators;
        location.write_metadata(&metadata).await
    }
    .await;
    match result {
        Ok(_) => {
            println!(
                "savepoint {} written from {} (canonical: restores into either backend at any parallelism)",
                location.pointer(),
                resolved.pointer
            );
            println!("{}", location.pointer());
            Ok(Outcome::Clean)
        }
        Err(e) => {
            if let Err(d) = location.dispose().await {
                eprintln!(
                    "flowstate: the partial savepoint {} was left behind: {d}",
                    location.pointer()
                );
            }
            Err(e.context(format!("converting {}", resolved.pointer)))
        }
    }
}
