//! Building a pinned upstream tool from a source tarball into `target/`
//! (passt for the network tests, a static fio for the block benchmark):
//! downloaded with `curl`, checked against its SHA-256, built once per
//! target directory under a lock.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Builds into `dir` unless `dir/last` is there already: `build(work)`
/// runs in a scratch directory beside `dir` (removed afterwards) and must
/// install `last` last, so that its presence says `dir` is complete.
pub fn build_once(
    dir: &Path,
    last: &str,
    what: &str,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if dir.join(last).is_file() {
        return Ok(());
    }
    let root = dir.parent().context("no parent directory")?;
    std::fs::create_dir_all(root)?;
    let _lock = crate::Lock::take(&root.join("lock"))?;
    if dir.join(last).is_file() {
        return Ok(());
    }
    eprintln!("xtask: building {what}");
    let work = root.join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let r = build(&work);
    let _ = std::fs::remove_dir_all(&work);
    r.with_context(|| format!("building {what}"))
}

/// Downloads `url` into `work`, checks its SHA-256 and unpacks it there;
/// returns `work/top` (the tarball's top directory).
pub fn unpack(work: &Path, url: &str, sha256: &str, top: &str) -> Result<PathBuf> {
    let tarball = work.join("source.tar");
    run(Command::new("curl")
        .args(["-fsSL", "--retry", "3", "--connect-timeout", "20"])
        .args(["--max-time", "300", "-o"])
        .arg(&tarball)
        .arg(url))
    .with_context(|| format!("downloading {url} (needs curl: apt-get install curl)"))?;
    let sum = Command::new("sha256sum").arg(&tarball).output()?;
    let got = String::from_utf8_lossy(&sum.stdout);
    if got.split_whitespace().next() != Some(sha256) {
        bail!("{url} has SHA-256 {got}, expected {sha256}");
    }
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(work))?;
    Ok(work.join(top))
}

/// Copies `names` (in this order) from `src` into `dir`, each through a
/// temporary name.
pub fn install(src: &Path, dir: &Path, names: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in names {
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::copy(src.join(name), &tmp)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

/// Runs `c`; its stderr goes into the error when it fails.
pub fn run(c: &mut Command) -> Result<()> {
    let o = c
        .output()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    if !o.status.success() {
        bail!(
            "{:?} failed ({}):\n{}",
            c.get_program(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}
