//! Kernel modules: finding them in an unpacked kernel package, reading their
//! dependencies from the ELF `.modinfo` section, and ordering them for loading.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Errors resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A module (or a dependency) is not in the kernel package.
    #[error("kernel module {0} not found in the kernel package")]
    NotFound(String),
    /// A module file is not a readable ELF object.
    #[error("cannot read module {0}: {1}")]
    Read(String, String),
}

/// A module to put into an initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Normalised name (`-` → `_`).
    pub name: String,
    /// Path relative to `/lib/modules/KVER`.
    pub rel: String,
    /// Absolute path of the file on the host.
    pub path: PathBuf,
    /// Names of the modules it depends on.
    pub depends: Vec<String>,
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The contents of the ELF64 section named `name`.
pub fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 {
        return None;
    }
    let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(elf, 0x3a)?);
    let shnum = usize::from(u16_at(elf, 0x3c)?);
    let shstrndx = usize::from(u16_at(elf, 0x3e)?);
    let sh = |i: usize| -> Option<(u32, usize, usize)> {
        let o = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(elf, o)?,
            usize::try_from(u64_at(elf, o + 0x18)?).ok()?,
            usize::try_from(u64_at(elf, o + 0x20)?).ok()?,
        ))
    };
    let (_, stroff, strsize) = sh(shstrndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    (0..shnum).find_map(|i| {
        let (nameoff, off, size) = sh(i)?;
        let n = strtab.get(nameoff as usize..)?;
        let n = &n[..n.iter().position(|&c| c == 0)?];
        (n == name.as_bytes()).then(|| elf.get(off..off.checked_add(size)?))?
    })
}

/// The `depends=` list of a module file.
pub fn module_depends(ko: &[u8]) -> Option<Vec<String>> {
    let info = elf_section(ko, ".modinfo")?;
    Some(
        info.split(|&c| c == 0)
            .find_map(|kv| kv.strip_prefix(b"depends="))
            .map(|d| {
                String::from_utf8_lossy(d)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(norm)
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Every `.ko` below `moddir` (= `/lib/modules/KVER`), by normalised name.
pub fn index(moddir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![moddir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(norm(stem), p);
            }
        }
    }
    out
}

/// `wanted` and all their dependencies, each after what it depends on.
pub fn resolve(moddir: &Path, wanted: &[&str]) -> Result<Vec<Module>, ModuleError> {
    let idx = index(moddir);
    let mut order = Vec::new();
    let mut done = HashSet::new();
    fn visit(
        name: &str,
        moddir: &Path,
        idx: &BTreeMap<String, PathBuf>,
        done: &mut HashSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), ModuleError> {
        let name = norm(name);
        if !done.insert(name.clone()) {
            return Ok(());
        }
        let path = idx
            .get(&name)
            .ok_or_else(|| ModuleError::NotFound(name.clone()))?;
        let data = std::fs::read(path)
            .map_err(|e| ModuleError::Read(path.display().to_string(), e.to_string()))?;
        let depends = module_depends(&data)
            .ok_or_else(|| ModuleError::Read(path.display().to_string(), "no .modinfo".into()))?;
        for d in &depends {
            visit(d, moddir, idx, done, order)?;
        }
        let rel = path
            .strip_prefix(moddir)
            .map(|r| r.display().to_string())
            .unwrap_or_default();
        order.push(Module {
            name,
            rel,
            path: path.clone(),
            depends,
        });
        Ok(())
    }
    for w in wanted {
        visit(w, moddir, &idx, &mut done, &mut order)?;
    }
    Ok(order)
}

/// A `modules.dep` for `mods` (which must be in load order, as [`resolve`]
/// returns them): paths relative to `/lib/modules/KVER`, each line listing the
/// module's dependency closure in reverse load order, as depmod writes it.
pub fn modules_dep(mods: &[Module]) -> String {
    let by_name: BTreeMap<&str, &Module> = mods.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut out = String::new();
    for m in mods {
        let mut closure: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = m.depends.iter().map(|s| s.as_str()).collect();
        while let Some(d) = stack.pop() {
            if closure.insert(d) {
                if let Some(dm) = by_name.get(d) {
                    stack.extend(dm.depends.iter().map(|s| s.as_str()));
                }
            }
        }
        let deps: Vec<&str> = mods
            .iter()
            .rev()
            .filter(|o| closure.contains(o.name.as_str()))
            .map(|o| o.rel.as_str())
            .collect();
        if deps.is_empty() {
            out.push_str(&format!("{}:\n", m.rel));
        } else {
            out.push_str(&format!("{}: {}\n", m.rel, deps.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object with a `.modinfo` section.
    fn fake_ko(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let modinfo_off = f.len();
        f.extend_from_slice(modinfo);
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        // Section headers: null, .modinfo, .shstrtab.
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, modinfo_off, modinfo.len()),
            (10, shstr_off, shstr.len()),
        ] {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        }
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn reads_depends_from_modinfo() {
        let ko = fake_ko(b"license=GPL\0depends=virtio,virtio-ring\0name=x\0");
        assert_eq!(module_depends(&ko).unwrap(), vec!["virtio", "virtio_ring"]);
        let none = fake_ko(b"license=GPL\0depends=\0");
        assert_eq!(module_depends(&none).unwrap(), Vec::<String>::new());
        assert_eq!(module_depends(b"not an elf"), None);
        // Truncated or lying headers never panic.
        let mut bad = fake_ko(b"depends=a\0");
        bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(module_depends(&bad), None);
        let ko = fake_ko(b"depends=a\0");
        for n in 0..ko.len() {
            let _ = module_depends(&ko[..n]);
        }
    }

    #[test]
    fn resolves_in_dependency_order_and_writes_modules_dep() {
        let dir = std::env::temp_dir().join(format!("vmm-mods-{}", std::process::id()));
        let kdir = dir.join("kernel/drivers");
        std::fs::create_dir_all(&kdir).unwrap();
        std::fs::write(kdir.join("a.ko"), fake_ko(b"depends=b,c-d\0")).unwrap();
        std::fs::write(kdir.join("b.ko"), fake_ko(b"depends=c_d\0")).unwrap();
        std::fs::write(kdir.join("c-d.ko"), fake_ko(b"depends=\0")).unwrap();
        let mods = resolve(&dir, &["a"]).unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["c_d", "b", "a"]);
        let dep = modules_dep(&mods);
        assert!(dep.contains("kernel/drivers/c-d.ko:\n"), "{dep}");
        assert!(
            dep.contains("kernel/drivers/b.ko: kernel/drivers/c-d.ko\n"),
            "{dep}"
        );
        // Reverse load order: loading the list from its end works.
        assert!(
            dep.contains("kernel/drivers/a.ko: kernel/drivers/b.ko kernel/drivers/c-d.ko\n"),
            "{dep}"
        );
        assert!(matches!(resolve(&dir, &["zz"]), Err(ModuleError::NotFound(n)) if n == "zz"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
