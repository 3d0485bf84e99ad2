//! The default guest, prepared from Debian packages: the distribution kernel
//! (`linux-image-amd64` → bzImage `vmlinuz` and the ELF `vmlinux` unpacked
//! from it), the virtio modules, `busybox-static`, and `sommelier-guest` as
//! `/init`, packed into an uncompressed initramfs.
//!
//! Everything lives under `$XDG_CACHE_HOME/vmapp` (or `~/.cache/vmapp`) and is
//! rebuilt when an input changes: the resolved package versions (re-read from
//! apt's lists by [`prepare`] with `refresh`) or the `sommelier-guest` binary.

pub mod cpio;
pub mod modules;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

pub use cpio::Cpio;
pub use modules::{Module, ModuleError};

/// Modules the default guest loads (with their dependencies).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "vmw_vsock_virtio_transport",
    "virtiofs",
    "pvpanic_mmio",
    // The ACPI power button (graceful stop) and its input events.
    "button",
    "evdev",
];

/// Modules the default guest loads when it shows windows (`vmapp.wayland=1`).
pub const GPU_MODULES: &[&str] = &["virtio_gpu"];

/// Modules the default guest loads in host-root mode (`vmapp.root=`): the
/// guest's root is an overlay on the host's.
pub const HOST_ROOT_MODULES: &[&str] = &["overlay"];

/// Modules the default guest loads when it has a network (`vmapp.net=`).
pub const NET_MODULES: &[&str] = &["tun"];

/// Modules `/init bench tcp … static` loads: the network benchmark's
/// reference VMM gives the guest a virtio-net device.
pub const BENCH_MODULES: &[&str] = &["virtio_net"];

/// Kernel-package directories unpacked into the cache (all that the default
/// guest and the emulated KVM host need).
const MODULE_DIRS: &[&str] = &[
    "arch/x86/kvm",
    "virt/lib",
    "drivers/virtio",
    "drivers/vhost",
    "drivers/block",
    "drivers/misc/pvpanic",
    "drivers/crypto/ccp",
    "drivers/char/hw_random",
    "fs/9p",
    "fs/netfs",
    "fs/fscache",
    "fs/fuse",
    "fs/overlayfs",
    "net/9p",
    "net/vmw_vsock",
    "drivers/gpu/drm/drm.ko",
    "drivers/gpu/drm/drm_kms_helper.ko",
    "drivers/gpu/drm/drm_shmem_helper.ko",
    "drivers/gpu/drm/virtio",
    "drivers/acpi/button.ko",
    "drivers/input/evdev.ko",
    "drivers/net/tun.ko",
    "drivers/net/virtio_net.ko",
    // The emulated KVM host's storage with latency (dm-delay over a loop
    // device) for the block benchmark.
    "drivers/md/dm-mod.ko",
    "drivers/md/dm-delay.ko",
    "drivers/net/net_failover.ko",
    "net/core/failover.ko",
];

/// Bump when the layout of the built image changes.
const FORMAT: u32 = 6;

/// Errors preparing the guest.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host tool failed or is missing.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The command.
        tool: String,
        /// What went wrong.
        detail: String,
    },
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The package data is not what was expected.
    #[error("{0}")]
    Package(String),
    /// The guest init binary is missing or unusable.
    #[error("{0}")]
    Init(String),
    /// A module could not be resolved.
    #[error(transparent)]
    Module(#[from] ModuleError),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ImageError {
    let w = what.to_string();
    move |e| ImageError::Io(w, e)
}

/// Runs a command, returning stdout; a failure names the command.
fn run(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let name = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Tool {
            tool: name.clone(),
            detail: format!("{e} (is it installed?)"),
        })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool: name,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// The cache directory: `$XDG_CACHE_HOME/vmapp` or `$HOME/.cache/vmapp`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("vmapp")
}

/// A Debian package resolved from apt's lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Candidate version.
    pub version: String,
}

fn apt_show(name: &str) -> Result<String, ImageError> {
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions", name]))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn field<'a>(control: &'a str, key: &str) -> Option<&'a str> {
    control
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// Resolves `linux-image-amd64` to its versioned kernel package, and `busybox-static`.
pub fn resolve_packages() -> Result<(Package, Package), ImageError> {
    let meta = apt_show("linux-image-amd64")?;
    let dep = field(&meta, "Depends")
        .and_then(|d| {
            d.split(',')
                .map(str::trim)
                .find(|d| d.starts_with("linux-image-"))
        })
        .and_then(|d| d.split_whitespace().next())
        .ok_or_else(|| {
            ImageError::Package(
                "linux-image-amd64 names no kernel package (run apt-get update?)".into(),
            )
        })?
        .to_string();
    let pkg = |name: String| -> Result<Package, ImageError> {
        let c = apt_show(&name)?;
        let version = field(&c, "Version")
            .ok_or_else(|| ImageError::Package(format!("no version for {name}")))?
            .to_string();
        Ok(Package { name, version })
    };
    Ok((pkg(dep)?, pkg("busybox-static".into())?))
}

/// Downloads `p` into `dir` with `apt-get download` unless it is there.
pub fn download(p: &Package, dir: &Path) -> Result<PathBuf, ImageError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
    let escaped = p.version.replace(':', "%3a");
    let name = format!("{}_{}_amd64.deb", p.name, escaped);
    let path = dir.join(&name);
    if path.exists() {
        return Ok(path);
    }
    eprintln!("vmapp: downloading {} {}", p.name, p.version);
    run(Command::new("apt-get")
        .args(["download", "-q"])
        .arg(format!("{}={}", p.name, p.version))
        .current_dir(dir))?;
    if !path.exists() {
        return Err(ImageError::Package(format!(
            "apt-get download did not produce {name}"
        )));
    }
    Ok(path)
}

/// Unpacks the members matching `patterns` from a .deb into `dest`.
fn unpack(deb: &Path, dest: &Path, patterns: &[String]) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(io_err(dest.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Tool {
            tool: "dpkg-deb".into(),
            detail: e.to_string(),
        })?;
    let stdout = dpkg
        .stdout
        .take()
        .ok_or_else(|| ImageError::Package("dpkg-deb gave no output".into()))?;
    let tar = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(dest)
        .args(patterns)
        .stdin(stdout)
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "tar".into(),
            detail: e.to_string(),
        })?;
    let d = dpkg.wait().map_err(io_err("dpkg-deb"))?;
    if !tar.status.success() || !d.success() {
        return Err(ImageError::Tool {
            tool: format!("dpkg-deb --fsys-tarfile {} | tar -x", deb.display()),
            detail: String::from_utf8_lossy(&tar.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Finds the xz stream inside a bzImage and decompresses it into an ELF vmlinux.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<(), ImageError> {
    let data = std::fs::read(vmlinuz).map_err(io_err(vmlinuz.display()))?;
    const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    let start = data
        .windows(XZ.len())
        .position(|w| w == XZ)
        .ok_or_else(|| ImageError::Package(format!("{} has no xz payload", vmlinuz.display())))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| ImageError::Tool {
            tool: "xz".into(),
            detail: format!("{e} (install xz-utils)"),
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ImageError::Package("xz stdin".into()))?;
    let payload = data[start..].to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let o = child.wait_with_output().map_err(io_err("xz"))?;
    let _ = writer.join();
    if !o.stdout.starts_with(b"\x7fELF") {
        return Err(ImageError::Package(
            "xz payload of vmlinuz is not an ELF vmlinux".into(),
        ));
    }
    write_atomic(out, &o.stdout)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io_err(tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(io_err(path.display()))
}

/// The distribution kernel unpacked in the cache.
#[derive(Clone, Debug)]
pub struct KernelTree {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// bzImage.
    pub vmlinuz: PathBuf,
    /// ELF vmlinux (with the PVH note).
    pub vmlinux: PathBuf,
    /// `lib/modules/RELEASE` of the unpacked package (only [`MODULE_DIRS`]).
    pub moddir: PathBuf,
    /// busybox-static's binary.
    pub busybox: PathBuf,
    /// The packages these came from.
    pub packages: (Package, Package),
}

/// Holds an exclusive flock on the cache while preparing.
struct CacheLock(File);

impl CacheLock {
    fn take(dir: &Path) -> Result<Self, ImageError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
        let f = File::create(dir.join("lock")).map_err(io_err("cache lock"))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ImageError::Io(
                "cache lock".into(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self(f))
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own fd.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Unpacks the kernel and busybox packages into `cache/kernel` (once per version).
pub fn kernel_tree(cache: &Path, packages: (Package, Package)) -> Result<KernelTree, ImageError> {
    let (kpkg, bpkg) = &packages;
    let release = kpkg
        .name
        .strip_prefix("linux-image-")
        .ok_or_else(|| ImageError::Package(format!("unexpected kernel package {}", kpkg.name)))?
        .trim_end_matches("-unsigned")
        .to_string();
    let dir = cache
        .join("kernel")
        .join(format!("{}_{}", kpkg.name, kpkg.version));
    let tree = KernelTree {
        vmlinuz: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        moddir: dir.join("root/lib/modules").join(&release),
        busybox: dir.join("busybox"),
        release,
        packages: packages.clone(),
    };
    let done = dir.join("complete");
    let stamp = MODULE_DIRS.join("\n");
    if std::fs::read_to_string(&done).is_ok_and(|s| s == stamp) {
        return Ok(tree);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let debs = cache.join("debs");
    let kdeb = download(kpkg, &debs)?;
    let bdeb = download(bpkg, &debs)?;
    eprintln!("vmapp: unpacking {}", kpkg.name);
    let root = dir.join("root");
    let mut pats = vec![format!("./boot/vmlinuz-{}", tree.release)];
    pats.extend(
        MODULE_DIRS
            .iter()
            .map(|d| format!("./lib/modules/{}/kernel/{d}", tree.release)),
    );
    unpack(&kdeb, &root, &pats)?;
    std::fs::rename(
        root.join(format!("boot/vmlinuz-{}", tree.release)),
        &tree.vmlinuz,
    )
    .map_err(io_err("vmlinuz"))?;
    eprintln!("vmapp: extracting vmlinux from vmlinuz");
    extract_vmlinux(&tree.vmlinuz, &tree.vmlinux)?;
    let broot = dir.join("busybox-root");
    unpack(&bdeb, &broot, &["./bin/busybox".into()])?;
    std::fs::rename(broot.join("bin/busybox"), &tree.busybox).map_err(io_err("busybox"))?;
    let _ = std::fs::remove_dir_all(&broot);
    std::fs::write(&done, stamp).map_err(io_err("kernel cache stamp"))?;
    Ok(tree)
}

/// busybox applets as archive paths (`bin/sh`, `usr/bin/awk`, …).
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = run(Command::new(busybox).arg("--list-full"))?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect())
}

/// Where the guest's `wget` lives (a link to `/init`, whose wget survives
/// `-T`, unlike busybox 1.35's).
const WGET: &str = "usr/bin/wget";

/// busybox with its `wget` applet renamed to
/// [`sommelier_guest::BUSYBOX_WGET`]: Debian's static busybox runs its own
/// applets before looking at `PATH` (`sh -c 'wget …'` would never reach
/// [`WGET`]), and its wget crashes on `-T`. The applet names are one sorted,
/// NUL-separated table; the new name sorts in the same place. Left as it is
/// (with a warning) if the name is not there exactly once.
fn without_wget_applet(mut bb: Vec<u8>) -> Vec<u8> {
    let (from, to) = (
        b"\0wget\0",
        format!("\0{}\0", sommelier_guest::BUSYBOX_WGET),
    );
    let at: Vec<usize> = bb
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| w == from)
        .map(|(i, _)| i)
        .collect();
    match at.as_slice() {
        [i] if to.len() == from.len() => bb[*i..*i + from.len()].copy_from_slice(to.as_bytes()),
        _ => tracing::warn!(
            "busybox: no single wget applet to rename; the guest's wget is busybox's"
        ),
    }
    bb
}

/// Adds the base directories, `/dev/console`, busybox with its applet links,
/// and `mods` with a `modules.dep` to an archive.
pub fn add_base(c: &mut Cpio, tree: &KernelTree, mods: &[Module]) -> Result<(), ImageError> {
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "root",
        "mnt",
        "lib",
        "lib/modules",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    let bb = std::fs::read(&tree.busybox).map_err(io_err(tree.busybox.display()))?;
    c.file("bin/busybox", 0o755, &without_wget_applet(bb));
    for a in busybox_applets(&tree.busybox)? {
        if a != "bin/busybox" && a != WGET {
            let depth = a.matches('/').count();
            c.symlink(&a, &format!("{}bin/busybox", "../".repeat(depth)));
        }
    }
    // busybox 1.35's wget crashes on -T: the guest's init has its own.
    c.symlink(WGET, "../../init");
    let kdir = format!("lib/modules/{}", tree.release);
    c.dir(&kdir);
    let mut dirs: Vec<String> = Vec::new();
    for m in mods {
        let mut acc = kdir.clone();
        for part in Path::new(&m.rel)
            .parent()
            .into_iter()
            .flat_map(|p| p.iter())
        {
            acc = format!("{acc}/{}", part.to_string_lossy());
            if !dirs.contains(&acc) {
                c.dir(&acc);
                dirs.push(acc.clone());
            }
        }
        let data = std::fs::read(&m.path).map_err(io_err(m.path.display()))?;
        c.file(&format!("{kdir}/{}", m.rel), 0o644, &data);
    }
    c.file(
        &format!("{kdir}/modules.dep"),
        0o644,
        modules::modules_dep(mods).as_bytes(),
    );
    Ok(())
}

/// The prepared default guest.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// ELF vmlinux (PVH entry).
    pub vmlinux: PathBuf,
    /// bzImage.
    pub bzimage: PathBuf,
    /// Uncompressed cpio initramfs with `sommelier-guest` as `/init`.
    pub initramfs: PathBuf,
    /// Kernel release.
    pub release: String,
}

/// Whether an ELF file asks for a dynamic loader (PT_INTERP).
fn is_dynamic(elf: &[u8]) -> bool {
    let get = |o: usize, n: usize| elf.get(o..o + n);
    let (Some(phoff), Some(phent), Some(phnum)) = (get(0x20, 8), get(0x36, 2), get(0x38, 2)) else {
        return true;
    };
    let phoff = u64::from_le_bytes(phoff.try_into().unwrap_or([0; 8])) as usize;
    let phent = u16::from_le_bytes(phent.try_into().unwrap_or([0; 2])) as usize;
    let phnum = u16::from_le_bytes(phnum.try_into().unwrap_or([0; 2])) as usize;
    (0..phnum).any(|i| {
        get(phoff + i * phent, 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap_or([0; 4])) == 3)
    })
}

/// Where `sommelier-guest` is: `$VMAPP_GUEST_INIT`, or next to this executable.
pub fn default_init_path() -> Result<PathBuf, ImageError> {
    if let Some(p) = std::env::var_os("VMAPP_GUEST_INIT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(io_err("current executable"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| ImageError::Init("executable has no directory".into()))?;
    // Integration tests run from target/<triple>/<profile>/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("sommelier-guest");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(ImageError::Init(format!(
        "sommelier-guest not found next to {} (build it: cargo build -p sommelier-guest, or set VMAPP_GUEST_INIT)",
        exe.display()
    )))
}

/// The default guest's initramfs: busybox, the modules (with the lists
/// its init loads: always, for the gpu, for host-root mode, for the network,
/// for the network benchmark) and `init`.
fn guest_initramfs(tree: &KernelTree, init_data: &[u8]) -> Result<Vec<u8>, ImageError> {
    // Each list the init loads, by the file it reads it from.
    let lists: [(&str, &[&str]); 5] = [
        ("modules", GUEST_MODULES),
        ("modules-gpu", GPU_MODULES),
        ("modules-host-root", HOST_ROOT_MODULES),
        ("modules-net", NET_MODULES),
        ("modules-bench", BENCH_MODULES),
    ];
    let wanted: Vec<&str> = lists.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    let mods = modules::resolve(&tree.moddir, &wanted)?;
    let mut c = Cpio::new();
    add_base(&mut c, tree, &mods)?;
    c.dir("etc/vmapp");
    for (name, list) in lists {
        let text = format!("{}\n", list.join("\n"));
        c.file(&format!("etc/vmapp/{name}"), 0o644, text.as_bytes());
    }
    c.file("init", 0o755, init_data);
    let mut buf = Vec::new();
    c.finish(&mut buf).map_err(io_err("initramfs"))?;
    Ok(buf)
}

/// Prepares (or reuses) the default guest in `cache`. With `refresh`, package
/// versions are re-resolved from apt's lists; otherwise a complete cached
/// image is reused as long as `init` is unchanged.
pub fn prepare(cache: &Path, init: &Path, refresh: bool) -> Result<GuestImage, ImageError> {
    let init_data = std::fs::read(init).map_err(io_err(init.display()))?;
    if is_dynamic(&init_data) {
        return Err(ImageError::Init(format!(
            "{} is dynamically linked; the guest init must be static (build with the workspace's .cargo/config.toml)",
            init.display()
        )));
    }
    let gdir = cache.join("guest");
    let stamp_path = gdir.join("stamp");
    let image = |release: &str| GuestImage {
        vmlinux: gdir.join("vmlinux"),
        bzimage: gdir.join("vmlinuz"),
        initramfs: gdir.join("initramfs.cpio"),
        release: release.to_string(),
    };
    let init_hash = format!("{:x}", Sha256::digest(&init_data));
    let cached = || -> Option<GuestImage> {
        let old = std::fs::read_to_string(&stamp_path).ok()?;
        let fresh = field(&old, "init") == Some(init_hash.as_str())
            && field(&old, "format") == Some(FORMAT.to_string().as_str());
        let img = image(field(&old, "release")?);
        (fresh && img.vmlinux.exists() && img.bzimage.exists() && img.initramfs.exists())
            .then_some(img)
    };
    // A complete image is used without taking the lock, so a read-only cache
    // (as inside the emulated KVM host) works.
    if !refresh {
        if let Some(img) = cached() {
            return Ok(img);
        }
    }
    let _lock = CacheLock::take(cache)?;
    if !refresh {
        if let Some(img) = cached() {
            return Ok(img);
        }
    }
    let old = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    let packages = resolve_packages()?;
    let stamp = format!(
        "format: {FORMAT}\nkernel: {} {}\nbusybox: {}\ninit: {init_hash}\nrelease: {}\n",
        packages.0.name,
        packages.0.version,
        packages.1.version,
        packages.0.name.trim_start_matches("linux-image-")
    );
    let img = image(packages.0.name.trim_start_matches("linux-image-"));
    if stamp == old && img.vmlinux.exists() && img.bzimage.exists() && img.initramfs.exists() {
        return Ok(img);
    }
    let tree = kernel_tree(cache, packages)?;
    eprintln!("vmapp: building the guest initramfs ({})", tree.release);
    std::fs::create_dir_all(&gdir).map_err(io_err(gdir.display()))?;
    write_atomic(&img.initramfs, &guest_initramfs(&tree, &init_data)?)?;
    for (src, dst) in [(&tree.vmlinux, &img.vmlinux), (&tree.vmlinuz, &img.bzimage)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).map_err(io_err(dst.display()))?;
        std::fs::rename(&tmp, dst).map_err(io_err(dst.display()))?;
    }
    write_atomic(&stamp_path, stamp.as_bytes())?;
    eprintln!("vmapp: guest ready in {}", gdir.display());
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_loses_its_wget_applet_name_and_nothing_else() {
        let table = b"\0wc\0wget\0which\0".to_vec();
        let mut bb = b"ELF...".to_vec();
        bb.extend(&table);
        bb.extend(b"usage: wget");
        let out = without_wget_applet(bb.clone());
        assert_eq!(out.len(), bb.len());
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("\0wc\0wgez\0which\0"), "{s:?}");
        assert!(s.ends_with("usage: wget"), "only the table entry changes");
        // Twice (or not at all): left alone.
        let mut twice = bb.clone();
        twice.extend(&table);
        assert_eq!(without_wget_applet(twice.clone()), twice);
    }

    #[test]
    fn control_fields() {
        let c = "Package: x\nVersion: 1:2.3-4\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n";
        assert_eq!(field(c, "Version"), Some("1:2.3-4"));
        assert_eq!(
            field(c, "Depends"),
            Some("linux-image-6.1.0-56-amd64 (= 6.1.192-2)")
        );
        assert_eq!(field(c, "Missing"), None);
    }

    #[test]
    fn static_and_dynamic_elves() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The workspace builds everything static (see .cargo/config.toml).
        assert!(!is_dynamic(&me));
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(is_dynamic(&ls));
        assert!(is_dynamic(b"short"));
    }
}
