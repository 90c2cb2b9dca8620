//! Reading the workload runners' output: one figure per line,
//! `<system>\t<workload>\t<backend>\t<metric>\t<value>\t<unit>`.

use std::collections::BTreeMap;
use std::fmt;

/// One figure of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `flowstate` or `flink-<version>`.
    pub system: String,
    /// `W1`, `W2`, `S1`, ...
    pub workload: String,
    /// `heap`, `rocksdb-full`, `raw-hashmap`, ...
    pub backend: String,
    /// `value.get`, `ckpt.2.bytes`, `200000.snapshot_ms`, ...
    pub metric: String,
    /// The figure.
    pub value: f64,
    /// `ops/ms`, `ms`, `bytes`, ...
    pub unit: String,
}

/// A value that is not a finite number, with the file and line it is on.
#[derive(Debug, PartialEq)]
pub struct ParseError {
    /// The file, as named to [`parse`].
    pub file: String,
    /// The line number, from 1.
    pub line: usize,
    /// The value field as written.
    pub value: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: value `{}` is not a number", self.file, self.line, self.value)
    }
}

impl std::error::Error for ParseError {}

/// Parses one file's text (`file` names it in errors). Lines that do not have
/// exactly six tab-separated fields are ignored.
pub fn parse(text: &str, file: &str) -> Result<Vec<Record>, ParseError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        let [system, workload, backend, metric, value, unit] = fields[..] else {
            continue;
        };
        let parsed = value.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let Some(value) = parsed else {
            return Err(ParseError {
                file: file.to_string(),
                line: i + 1,
                value: value.to_string(),
            });
        };
        records.push(Record {
            system: system.to_string(),
            workload: workload.to_string(),
            backend: backend.to_string(),
            metric: metric.to_string(),
            value,
            unit: unit.to_string(),
        });
    }
    Ok(records)
}

/// The systems of `records`, in the order they first appear.
pub fn systems(records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        if !out.contains(&r.system) {
            out.push(r.system.clone());
        }
    }
    out
}

/// The value of one figure (the last one if it is repeated).
pub fn get(records: &[Record], system: &str, workload: &str, backend: &str, metric: &str) -> Option<f64> {
    records
        .iter()
        .rev()
        .find(|r| r.system == system && r.workload == workload && r.backend == backend && r.metric == metric)
        .map(|r| r.value)
}

/// The figures of one W2 checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Synchronous phase, ms.
    pub sync_ms: Option<f64>,
    /// Asynchronous phase, ms.
    pub async_ms: Option<f64>,
    /// Bytes written by this checkpoint.
    pub bytes: Option<f64>,
    /// Bytes of the whole checkpoint, shared files included.
    pub full_bytes: Option<f64>,
}

/// W2's `ckpt.<id>.<what>` figures of one system and backend, by checkpoint id.
pub fn checkpoints(records: &[Record], system: &str, backend: &str) -> BTreeMap<u64, Checkpoint> {
    let mut out: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.workload == "W2" && r.system == system && r.backend == backend)
    {
        let Some(rest) = r.metric.strip_prefix("ckpt.") else {
            continue;
        };
        let Some((id, what)) = rest.split_once('.') else {
            continue;
        };
        let Ok(id) = id.parse::<u64>() else { continue };
        let cp = out.entry(id).or_default();
        match what {
            "sync_ms" => cp.sync_ms = Some(r.value),
            "async_ms" => cp.async_ms = Some(r.value),
            "bytes" => cp.bytes = Some(r.value),
            "full_bytes" => cp.full_bytes = Some(r.value),
            _ => {}
        }
    }
    out
}

/// S1's `<keys>.<what>` figures of one system and backend, as (keys, value) by keys.
pub fn scale_points(records: &[Record], system: &str, backend: &str, what: &str) -> Vec<(f64, f64)> {
    let mut out: BTreeMap<u64, f64> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.workload == "S1" && r.system == system && r.backend == backend)
    {
        if let Some((keys, w)) = r.metric.split_once('.') {
            if let (Ok(keys), true) = (keys.parse::<u64>(), w == what) {
                out.insert(keys, r.value);
            }
        }
    }
    out.into_iter().map(|(k, v)| (k as f64, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_lines_and_ignores_others() {
        let text = "flowstate\tW1\theap\tvalue.get\t3296.2\tops/ms\r\n\
                    a short line\n\
                    flowstate\tW1\theap\tload\n\
                    x\ty\tz\tw\t1\tu\textra\n\
                    flink-1.20.3\tW2\theap-full\tckpt.1.bytes\t 2.5e8 \tbytes\n";
        let records = parse(text, "in.tsv").unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].backend, "heap");
        assert_eq!(records[0].value, 3296.2);
        assert_eq!(records[1].system, "flink-1.20.3");
        assert_eq!(records[1].value, 2.5e8);
        assert_eq!(systems(&records), ["flowstate", "flink-1.20.3"]);
        assert_eq!(get(&records, "flowstate", "W1", "heap", "value.get"), Some(3296.2));
        assert_eq!(get(&records, "flowstate", "W1", "heap", "value.update"), None);
    }

    #[test]
    fn refuses_a_bad_number_with_file_and_line() {
        for bad in ["12,5", "", "NaN", "inf"] {
            let text = format!("flowstate\tW1\theap\tload\t1.0\tms\n\nflowstate\tW1\theap\tvalue.get\t{bad}\tops/ms\n");
            let err = parse(&text, "runs/flowstate.tsv").unwrap_err();
            assert_eq!(err.line, 3);
            assert_eq!(
                err.to_string(),
                format!("runs/flowstate.tsv:3: value `{bad}` is not a number")
            );
        }
    }

    #[test]
    fn groups_per_checkpoint_id() {
        let text = "flowstate\tW2\trocksdb-full\tckpt.2.sync_ms\t20.8\tms\n\
                    flowstate\tW2\trocksdb-full\tckpt.1.async_ms\t1144.1\tms\n\
                    flowstate\tW2\trocksdb-full\tckpt.10.bytes\t100\tbytes\n\
                    flowstate\tW2\trocksdb-full\tckpt.2.full_bytes\t300\tbytes\n\
                    flowstate\tW2\trocksdb-full\trestore.remote_ms\t1398.1\tms\n\
                    flowstate\tW2\theap-full\tckpt.2.sync_ms\t99\tms\n\
                    flink-1.20.3\tW2\trocksdb-full\tckpt.2.sync_ms\t44.7\tms\n";
        let records = parse(text, "t").unwrap();
        let cps = checkpoints(&records, "flowstate", "rocksdb-full");
        assert_eq!(cps.keys().copied().collect::<Vec<_>>(), [1, 2, 10]);
        assert_eq!(
            cps[&1],
            Checkpoint {
                async_ms: Some(1144.1),
                ..Checkpoint::default()
            }
        );
        assert_eq!(
            cps[&2],
            Checkpoint {
                sync_ms: Some(20.8),
                full_bytes: Some(300.0),
                ..Checkpoint::default()
            }
        );
        assert_eq!(cps[&10].bytes, Some(100.0));
    }

    #[test]
    fn scale_points_sort_by_keys() {
        let text = "flowstate\tS1\theap-full\t2000000.snapshot_ms\t80\tms\n\
                    flowstate\tS1\theap-full\t200000.snapshot_ms\t8\tms\n\
                    flowstate\tS1\theap-full\t200000.restore_ms\t9\tms\n";
        let records = parse(text, "t").unwrap();
        assert_eq!(
            scale_points(&records, "flowstate", "heap-full", "snapshot_ms"),
            [(2e5, 8.0), (2e6, 80.0)]
        );
    }
}
