//! Records the git commit for `--version` (`commit: <sha>`), or nothing outside a checkout, and
//! renders the man pages from their one source, docs/<name>.1.md (mandown: Markdown to roff),
//! into `target/<profile>/man/<name>.1`, where the Debian package (`cargo deb`) takes them.
use std::path::{Path, PathBuf};
use std::process::Command;

/// (source, page name): the man pages the package installs.
const MAN_PAGES: [(&str, &str); 2] = [
    ("docs/rslirp.1.md", "rslirp"),
    ("docs/rslirpctl.1.md", "rslirpctl"),
];

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(commit) = commit {
        println!("cargo:rustc-env=RSLIRP_GIT_COMMIT={commit}");
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/rslirp-<hash>/out: the pages go next to the binaries
    // (<target>/<profile>/man/), a path that does not change from build to build, so that
    // Cargo.toml's [package.metadata.deb] assets can name it ("target/release/man/...").
    let man_dir = out_dir
        .ancestors()
        .nth(3)
        .map(|profile_dir| profile_dir.join("man"))
        .unwrap_or_else(|| out_dir.join("man"));
    std::fs::create_dir_all(&man_dir).expect("create the man page directory");
    for (source, name) in MAN_PAGES {
        println!("cargo:rerun-if-changed={source}");
        let markdown = std::fs::read_to_string(source)
            .unwrap_or_else(|err| panic!("read the man page source {source}: {err}"));
        let roff = mandown::convert(&strip_title_block(&markdown), &name.to_uppercase(), 1);
        write_page(&man_dir.join(format!("{name}.1")), &roff);
    }
}

/// The source starts with a pandoc title block ("% RSLIRP(1) ..."), which mandown would print
/// as text: mandown writes the .TH line itself.
fn strip_title_block(markdown: &str) -> String {
    markdown
        .lines()
        .skip_while(|line| line.starts_with('%'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_page(path: &Path, roff: &str) {
    // Unchanged pages keep their timestamp (no needless repackaging or rebuilds downstream).
    if std::fs::read_to_string(path).ok().as_deref() == Some(roff) {
        return;
    }
    std::fs::write(path, roff).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}
