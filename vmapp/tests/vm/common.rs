//! Helpers shared by the integration tests that boot guests.
#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub const VMAPP: &str = env!("CARGO_BIN_EXE_vmapp");
/// Seconds one `vmapp launch` may take under the emulated host before it
/// counts as hung (`timeout` then exits 124, which no assertion accepts).
pub const T: u32 = 240;

/// Builds the default guest on this machine (where the cache is writable).
pub fn prepare() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let o = Command::new(VMAPP).arg("prepare").output().unwrap();
        assert!(
            o.status.success(),
            "vmapp prepare failed (is sommelier-guest built? `cargo xtask test` builds it):\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
}

/// Runs `script` where KVM boots stock kernels; returns (stdout, stderr).
pub fn in_kvm(script: &str) -> (String, String) {
    prepare();
    let o = xtask::run_script(script, Duration::from_secs(1200)).expect("running the VM script");
    assert_eq!(o.status, 0, "script failed:\n{}\n{}", o.stdout, o.stderr);
    (o.stdout, o.stderr)
}

/// The rest of the first line of `out` that starts with `key`.
pub fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in guest output:\n{out}"))
        .trim()
}
