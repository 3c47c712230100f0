//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml -p
//! rslirp-fuzz-harness --bin seeds` (scripts/fuzz.sh does it when a corpus is missing).
//! Each target's seeds go to `fuzz/corpus/<target>/seed-<name>`; other files there (what
//! the fuzzer found) are left alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let targets: [(&str, rslirp_fuzz_harness::Seeds); 5] = [
        ("frames", rslirp_fuzz_harness::frames::seeds()),
        ("api", rslirp_fuzz_harness::api::seeds()),
        ("dhcp", rslirp_fuzz_harness::dhcp::seeds()),
        ("dns", rslirp_fuzz_harness::dns::seeds()),
        ("cli", rslirp_fuzz_harness::cli::seeds()),
    ];
    for (target, seeds) in targets {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
    }
    Ok(())
}
