//! The passt the tests and benchmarks run: a pinned upstream release built
//! from Debian 13's source tarball into `target/passt/`.
//!
//! Why not the distribution's: Debian 12's passt (0.0~git20230309) loses
//! long TCP transfers for any VMM (QEMU's own guest → host flow stalls at
//! 64 MiB; its `-netdev stream` reader drops a length split across reads).
//! Upstream fixed both in 2023 and 2024; this is the release Debian 13
//! ships. The tarball is checked against its SHA-256 before it is built;
//! building needs `curl`, `make` and a C compiler, and fails loudly without.
//! The URL lasts while Debian's archive holds that tarball (Debian 13's
//! passt); when it moves on, so must the pin.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::source::run;

/// passt's upstream version (what `passt --version` names).
pub const VERSION: &str = "2025_05_03.587980c";
/// Debian 13's copy of upstream's tarball.
const URL: &str =
    "http://deb.debian.org/debian/pool/main/p/passt/passt_0.0~git20250503.587980c.orig.tar.xz";
const SHA256: &str = "69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49";

/// The directory holding the pinned `passt` binary, built first if it is
/// not there yet (under `target`, the workspace's target directory).
pub fn ensure(target: &Path) -> Result<PathBuf> {
    let bin = target.join("passt").join(VERSION).join("bin");
    crate::source::build_once(&bin, "passt", &format!("passt {VERSION}"), |work| {
        build(work, &bin)
    })?;
    Ok(bin)
}

fn build(work: &Path, bin: &Path) -> Result<()> {
    let src = crate::source::unpack(work, URL, SHA256, &format!("passt-{VERSION}"))?;
    // Both builds, as packagers ship them: on a CPU with AVX2, passt runs
    // `passt.avx2` from its own directory.
    run(Command::new("make")
        .current_dir(&src)
        .arg(format!("VERSION={VERSION}"))
        .args(["passt", "passt.avx2"]))
    .context("compiling passt (needs make and a C compiler: apt-get install make gcc libc6-dev)")?;
    crate::source::install(&src, bin, &["passt.avx2", "passt"])
}

/// `PATH` with `dir` first.
pub fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let old = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&old));
    std::env::join_paths(dirs).with_context(|| format!("{} cannot go on PATH", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_passt_comes_first_on_the_path() {
        let p = path_with(Path::new("/x/passt/bin")).unwrap();
        let first = std::env::split_paths(&p).next().unwrap();
        assert_eq!(first, Path::new("/x/passt/bin"));
        assert!(path_with(Path::new("/a:b")).is_err());
    }
}
