//! rslirpctl from a caller's side: run it against a control socket, and read its tables
//! back (cells, and whether the columns line up).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use super::process::{command, run};
use super::STEP_TIMEOUT;

/// The rslirpctl cargo built next to the binary under test.
pub fn rslirpctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rslirpctl"))
}

/// `rslirpctl --socket SOCKET ARGS...`, whatever its exit status.
pub fn ctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = command(&rslirpctl_bin().to_string_lossy(), &["--socket"]);
    cmd.arg(socket).args(args);
    run(&mut cmd, STEP_TIMEOUT)
}

/// [`ctl`] that must succeed without a word on stderr; returns stdout.
pub fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let out = ctl(socket, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "rslirpctl {args:?} failed ({}):\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    String::from_utf8(out.stdout).expect("rslirpctl prints UTF-8")
}

/// [`ctl`] that must fail with exit status `code`; returns stderr.
pub fn ctl_fails(socket: &Path, args: &[&str], code: i32) -> String {
    let out = ctl(socket, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "rslirpctl {args:?}: stdout {:?}, stderr {stderr:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `rslirpctl --json ARGS...`: stdout must be one line of JSON; returns it parsed and raw.
pub fn ctl_json(socket: &Path, args: &[&str]) -> (serde_json::Value, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let raw = ctl_ok(socket, &all);
    assert_eq!(raw.lines().count(), 1, "--json prints one line: {raw:?}");
    let value = serde_json::from_str(&raw)
        .unwrap_or_else(|e| panic!("rslirpctl {all:?} printed invalid JSON ({e}): {raw}"));
    (value, raw)
}

/// One table: the header's titles, and each row as title → cell.
#[derive(Debug)]
pub struct Table {
    pub titles: Vec<String>,
    pub rows: Vec<BTreeMap<String, String>>,
}

impl Table {
    /// Rows whose `title` column is `value`.
    pub fn rows_where(&self, title: &str, value: &str) -> Vec<&BTreeMap<String, String>> {
        self.rows
            .iter()
            .filter(|row| row.get(title).map(String::as_str) == Some(value))
            .collect()
    }
}

/// The tables in rslirpctl's output (separated by blank lines). Cells are at least two
/// spaces apart and never contain two spaces in a row; each cell must start where its
/// title starts (left-aligned text) or end where it ends (right-aligned numbers), so a
/// misaligned table fails here.
pub fn parse_tables(text: &str) -> Vec<Table> {
    text.split("\n\n").map(parse_table).collect()
}

fn parse_table(block: &str) -> Table {
    let mut lines = block.lines().filter(|line| !line.is_empty());
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("empty table in {block:?}"));
    let title_spans = cell_spans(header);
    let titles: Vec<String> = title_spans
        .iter()
        .map(|&(s, e)| header[s..e].into())
        .collect();
    let rows = lines
        .map(|line| {
            let spans = cell_spans(line);
            assert_eq!(
                spans.len(),
                titles.len(),
                "row {line:?} does not have the columns of {header:?}"
            );
            spans
                .iter()
                .zip(&title_spans)
                .zip(&titles)
                .map(|((&(start, end), &(title_start, title_end)), title)| {
                    assert!(
                        start == title_start || end == title_end,
                        "cell {:?} of {line:?} is not aligned with {title:?} in {header:?}",
                        &line[start..end]
                    );
                    (title.clone(), line[start..end].to_string())
                })
                .collect()
        })
        .collect();
    Table { titles, rows }
}

/// Byte ranges of the cells of a line: runs of text split at two or more spaces.
fn cell_spans(line: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !(bytes[i] == b' ' && bytes.get(i + 1).is_none_or(|&b| b == b' '))
        {
            i += 1;
        }
        spans.push((start, i));
    }
    spans
}
