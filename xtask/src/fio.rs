//! The fio the block benchmark runs in both VMMs' guests: upstream fio
//! 3.33 (what Debian 12 ships) built statically from Debian's copy of its
//! tarball into `target/fio/`, so that it runs from the benchmark's
//! initramfs, which has no shared libraries. Only the engines a block
//! benchmark needs are kept (`io_uring`, `psync`; no network or cluster
//! storage libraries). Building needs `curl`, `make` and a C compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::source::run;

/// fio's version.
pub const VERSION: &str = "3.33";
const URL: &str = "http://deb.debian.org/debian/pool/main/f/fio/fio_3.33.orig.tar.gz";
const SHA256: &str = "d2410e13e0f379d061d077cc5ae325835bb7c6186aa7bafc1df954cbc9b014fc";

/// The pinned static `fio`, built first if it is not there yet.
pub fn ensure(target: &Path) -> Result<PathBuf> {
    let dir = target.join("fio").join(VERSION);
    crate::source::build_once(&dir, "fio", &format!("fio {VERSION} (static)"), |work| {
        let src = crate::source::unpack(work, URL, SHA256, &format!("fio-{VERSION}"))?;
        // --disable-native: the guest's CPU may lack the build host's
        // instructions.
        run(Command::new("./configure").current_dir(&src).args([
            "--build-static",
            "--disable-native",
            "--disable-numa",
            "--disable-rdma",
            "--disable-rados",
            "--disable-rbd",
            "--disable-http",
            "--disable-gfapi",
            "--disable-pmem",
            "--disable-xnvme",
            "--disable-libzbc",
            "--disable-tcmalloc",
            "--disable-dfs",
            "--disable-libnfs",
        ]))
        .context("configuring fio (needs a C compiler: apt-get install gcc libc6-dev)")?;
        run(Command::new("make").current_dir(&src).args(["-j2", "fio"]))
            .context("compiling fio (needs make: apt-get install make)")?;
        run(Command::new("strip").arg(src.join("fio")))?;
        crate::source::install(&src, &dir, &["fio"])
    })?;
    Ok(dir.join("fio"))
}
