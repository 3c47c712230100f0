//! Runs saved inputs through a target without libFuzzer, for a backtrace under an ordinary
//! build: `cargo run --manifest-path fuzz/Cargo.toml -p rslirp-fuzz-harness --bin replay --
//! frames fuzz/artifacts/frames/crash-...` (files or directories).

use std::path::{Path, PathBuf};

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay TARGET FILE|DIR...");
    let run: fn(&[u8]) = match target.as_str() {
        "frames" => rslirp_fuzz_harness::frames::run,
        "api" => rslirp_fuzz_harness::api::run,
        "dhcp" => rslirp_fuzz_harness::dhcp::run,
        "dns" => rslirp_fuzz_harness::dns::run,
        "cli" => rslirp_fuzz_harness::cli::run,
        other => panic!("unknown target {other}"),
    };
    let mut files = Vec::new();
    for arg in args {
        collect(Path::new(&arg), &mut files);
    }
    for file in &files {
        eprintln!("{}", file.display());
        run(&std::fs::read(file).expect("readable input"));
    }
    eprintln!("{} inputs ran", files.len());
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .expect("readable directory")
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        files.extend(entries);
    } else {
        files.push(path.to_path_buf());
    }
}
