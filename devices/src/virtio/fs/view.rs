//! What part of a shared directory the guest may see: an allowlist of trees
//! (host-root mode shows `/usr`, `/etc`, … and nothing else of the host).
//!
//! The view is decided by directory identity (device, inode), captured when
//! the share is created, and by name:
//!
//! - a **way** directory (the share's root, `/var`, `/var/lib` for an allowed
//!   `/var/lib/flatpak`) shows only the names on the way to an allowed tree;
//!   any other name is `ENOENT` before the host is asked, and a listing of it
//!   shows only those names;
//! - inside an allowed **tree** everything is shown but the denied names
//!   (`/etc/shadow`: by name in the directory, so a file replaced on the host
//!   stays hidden) and, with `public_only`, entries others may not read;
//! - a tree or way that does not exist when the share is created is not
//!   shown, even if it appears later.
//!
//! Why this confines the guest: it reaches host files only by looking names
//! up one at a time from the root (see `share.rs`), the root is a way, a way
//! leads only to ways and tree roots, and `..` of a tree root is a way again.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use fuse_backend_rs::abi::fuse_abi::stat64;

/// What of a shared directory the guest sees. Paths are written from the
/// share's root: `/usr` is `HOSTDIR/usr`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    /// The trees shown (directories, or symlinks whose text the guest
    /// resolves in its own file system).
    pub allow: Vec<PathBuf>,
    /// Entries hidden inside the trees, by name in their directory.
    pub deny: Vec<PathBuf>,
    /// Hide what others may not read inside the trees: files without `o+r`,
    /// directories without `o+rx`.
    pub public_only: bool,
}

/// A device and inode number.
pub(crate) type Identity = (u64, u64);

/// The identity of a file as the file server reports it.
pub(crate) fn identity(st: &stat64) -> Identity {
    (st.st_dev, st.st_ino)
}

/// An [`Exposure`] resolved against the host directory.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Way directories and the names each shows.
    ways: HashMap<Identity, HashSet<Vec<u8>>>,
    /// Directories inside trees and the names hidden in them.
    denied: HashMap<Identity, HashSet<Vec<u8>>>,
    public_only: bool,
}

/// The components of a path written from the share's root; `None` if it
/// names the root itself or has `..`.
fn components(p: &Path) -> Option<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The identity of a real directory (not a symlink to one).
fn dir_identity(p: &Path) -> Option<Identity> {
    let m = std::fs::symlink_metadata(p).ok()?;
    m.is_dir().then(|| (m.dev(), m.ino()))
}

impl View {
    /// Resolves `e` against the directory `root`.
    pub(crate) fn new(root: &Path, e: &Exposure) -> Self {
        let mut v = View {
            public_only: e.public_only,
            ..View::default()
        };
        // The root is a way even if no tree exists: it shows nothing then.
        if let Some(id) = dir_identity(root) {
            v.ways.insert(id, HashSet::new());
        }
        let mut allowed: Vec<Vec<&std::ffi::OsStr>> =
            e.allow.iter().filter_map(|p| components(p)).collect();
        allowed.sort();
        allowed.dedup();
        let mut trees: Vec<Vec<&std::ffi::OsStr>> = Vec::new();
        for a in allowed {
            // A tree inside another is that tree already.
            if trees.iter().any(|t| a.starts_with(t)) {
                continue;
            }
            if v.add_way(root, &a) {
                trees.push(a);
            }
        }
        for d in &e.deny {
            let Some(c) = components(d) else { continue };
            let Some((name, dirs)) = c.split_last() else {
                continue;
            };
            let dir = dirs.iter().fold(root.to_path_buf(), |p, c| p.join(c));
            if let Some(id) = dir_identity(&dir) {
                v.denied
                    .entry(id)
                    .or_default()
                    .insert(name.as_encoded_bytes().to_vec());
            }
        }
        v
    }

    /// Records the ways to the tree `c`, if every directory on the way is a
    /// real directory and the tree exists.
    fn add_way(&mut self, root: &Path, c: &[&std::ffi::OsStr]) -> bool {
        let mut steps: Vec<(Identity, Vec<u8>)> = Vec::new();
        let mut here = root.to_path_buf();
        for name in c {
            let Some(id) = dir_identity(&here) else {
                return false;
            };
            steps.push((id, name.as_encoded_bytes().to_vec()));
            here = here.join(name);
        }
        if std::fs::symlink_metadata(&here).is_err() {
            return false;
        }
        for (id, name) in steps {
            self.ways.entry(id).or_default().insert(name);
        }
        true
    }

    /// Whether `name` may be looked up in the directory `parent`.
    pub(crate) fn may_look_up(&self, parent: Identity, name: &[u8]) -> bool {
        if name == b".." || name == b"." {
            return true;
        }
        match self.ways.get(&parent) {
            Some(names) => names.contains(name),
            None => !self.denied.get(&parent).is_some_and(|d| d.contains(name)),
        }
    }

    /// Whether the entry a lookup in `parent` found may be shown.
    pub(crate) fn may_show(&self, parent: Identity, st: &stat64) -> bool {
        // What a way names, and the ways themselves, were chosen by name.
        if !self.public_only || self.ways.contains_key(&parent) || self.is_way(identity(st)) {
            return true;
        }
        let mode = st.st_mode;
        match mode & libc::S_IFMT {
            libc::S_IFLNK => true,
            libc::S_IFDIR => {
                mode & (libc::S_IROTH | libc::S_IXOTH) == libc::S_IROTH | libc::S_IXOTH
            }
            _ => mode & libc::S_IROTH != 0,
        }
    }

    /// Whether entries of `dir` may be hidden for what they are (their
    /// mode): inside a tree of a view that hides what others may not read.
    pub(crate) fn hides_by_mode(&self, dir: Identity) -> bool {
        self.public_only && !self.ways.contains_key(&dir)
    }

    /// Whether `dir` is a way directory (nothing may be created in it).
    pub(crate) fn is_way(&self, dir: Identity) -> bool {
        self.ways.contains_key(&dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(p: &Path) -> Identity {
        dir_identity(p).unwrap()
    }

    fn st(p: &Path) -> stat64 {
        let m = std::fs::symlink_metadata(p).unwrap();
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut s: stat64 = unsafe { std::mem::zeroed() };
        s.st_dev = m.dev();
        s.st_ino = m.ino();
        s.st_mode = m.mode();
        s
    }

    #[test]
    fn ways_show_only_the_names_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["usr/bin", "var/lib/flatpak", "var/tmp", "srv", "etc/ssh"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        let e = Exposure {
            allow: [
                "/usr",
                "/usr/share",
                "/bin",
                "/var/lib/flatpak",
                "/etc",
                "/nix/store",
                "../x",
            ]
            .map(PathBuf::from)
            .to_vec(),
            deny: vec!["/etc/shadow".into(), "/nope/x".into()],
            public_only: false,
        };
        let v = View::new(r, &e);
        let root = id(r);
        for n in ["usr", "bin", "var", "etc", ".."] {
            assert!(v.may_look_up(root, n.as_bytes()), "{n}");
        }
        for n in ["srv", "nix", "tmp", "x"] {
            assert!(!v.may_look_up(root, n.as_bytes()), "{n}");
        }
        assert!(v.may_look_up(id(&r.join("var")), b"lib"));
        assert!(!v.may_look_up(id(&r.join("var")), b"tmp"));
        assert!(v.may_look_up(id(&r.join("var/lib")), b"flatpak"));
        // Inside trees: everything but the denied names.
        assert!(v.may_look_up(id(&r.join("var/lib/flatpak")), b"anything"));
        assert!(v.may_look_up(id(&r.join("usr")), b"share"));
        assert!(!v.may_look_up(id(&r.join("etc")), b"shadow"));
        assert!(v.may_look_up(id(&r.join("etc")), b"ssh"));
        assert!(
            !v.is_way(id(&r.join("usr"))),
            "/usr/share did not make /usr a way"
        );
        assert!(v.is_way(root) && !v.is_way(id(&r.join("srv"))));
    }

    #[test]
    fn a_way_through_a_symlink_is_not_taken() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("real/lib/flatpak")).unwrap();
        std::os::unix::fs::symlink("real", r.join("var")).unwrap();
        let e = Exposure {
            allow: vec!["/var/lib/flatpak".into()],
            ..Exposure::default()
        };
        let v = View::new(r, &e);
        assert!(v.is_way(id(r)), "the root is a way even with no tree");
        assert!(!v.may_look_up(id(r), b"var"));
        assert!(!v.may_look_up(id(r), b"real"));
    }

    #[test]
    fn public_only_hides_what_others_cannot_read_inside_trees() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("home/me/.local/share/fonts")).unwrap();
        std::fs::create_dir_all(r.join("etc/private")).unwrap();
        for (p, m) in [("home/me", 0o700), ("etc/private", 0o750)] {
            std::fs::set_permissions(r.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        for (f, m) in [("etc/shadow", 0o640), ("etc/passwd", 0o644)] {
            std::fs::write(r.join(f), "x").unwrap();
            std::fs::set_permissions(r.join(f), std::fs::Permissions::from_mode(m)).unwrap();
        }
        let e = Exposure {
            allow: vec!["/etc".into(), "/home/me/.local/share/fonts".into()],
            deny: vec![],
            public_only: true,
        };
        let v = View::new(r, &e);
        let etc = id(&r.join("etc"));
        assert!(!v.may_show(etc, &st(&r.join("etc/shadow"))));
        assert!(!v.may_show(etc, &st(&r.join("etc/private"))));
        assert!(v.may_show(etc, &st(&r.join("etc/passwd"))));
        // A private home on the way to a shown tree is still a way.
        assert!(v.may_show(id(&r.join("home")), &st(&r.join("home/me"))));
        assert!(v.may_show(
            id(&r.join("home/me/.local/share/fonts")),
            &st(&r.join("home/me"))
        ));
    }
}
