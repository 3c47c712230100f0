//! Reading a capture back the way an operator would: `tcpdump -r FILE -nn -tt`.

use std::path::Path;

use super::process::{command, run};
use super::STEP_TIMEOUT;

/// One line per captured frame (epoch timestamp first). Panics unless tcpdump reads the
/// whole file without complaint: a truncated record or a bad header fails here.
pub fn tcpdump_lines(file: &Path) -> Vec<String> {
    assert!(
        super::find_in_path("tcpdump").is_some(),
        "tcpdump is missing; scripts/test.sh installs it"
    );
    let mut cmd = command("tcpdump", &["-nn", "-tt", "-r"]);
    cmd.arg(file);
    let out = run(&mut cmd, STEP_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tcpdump -r {} failed ({}): {stderr}",
        file.display(),
        out.status
    );
    // Its only remark is which file and link type it reads.
    for line in stderr.lines() {
        assert!(
            line.starts_with("reading from file") && line.contains("EN10MB (Ethernet)"),
            "tcpdump complained: {stderr}"
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The lines that contain `needle`.
pub fn count_containing(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|line| line.contains(needle)).count()
}
