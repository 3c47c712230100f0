//! `--enable-sandbox` and `--enable-seccomp`: confine the process once setup is done.
//! Not implemented yet: the command line refuses both flags (see cli.rs), so `apply` is only
//! ever called with both false.

/// Apply the requested confinement; any failure is fatal (one line, exit 1).
pub fn apply(enable_sandbox: bool, enable_seccomp: bool) -> Result<(), String> {
    if enable_sandbox || enable_seccomp {
        return Err("--enable-sandbox/--enable-seccomp are not supported yet".into());
    }
    Ok(())
}
