//! `vmapp desktop NAME [--remove]`: an application-menu entry (XDG desktop
//! entry, `$XDG_DATA_HOME/applications/vmapp-NAME.desktop`) that launches
//! the app profile NAME. Its name says that it runs in a VM; its icon is the
//! host app's own when the profile's command is the program of an installed
//! desktop entry (looked up in `$XDG_DATA_HOME` and `$XDG_DATA_DIRS`).

use std::path::{Path, PathBuf};

use crate::profile::{self, Profile, ProfileError};

/// The directories that hold installed desktop entries, most important
/// first.
fn data_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(h) = profile::data_home() {
        dirs.push(h);
    }
    let sys = std::env::var("XDG_DATA_DIRS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/usr/local/share:/usr/share".into());
    dirs.extend(sys.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
    dirs
}

/// The value of `key` in a desktop entry's `[Desktop Entry]` group.
fn entry_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut in_main = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_main = line == "[Desktop Entry]";
        } else if in_main {
            if let Some(v) = line
                .strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix('='))
            {
                return Some(v.trim());
            }
        }
    }
    None
}

/// The program an `Exec=` line runs (its first word, without a path; past
/// `env` and its `KEY=VALUE`s).
fn exec_program(exec: &str) -> Option<&str> {
    let first = exec.split_whitespace().find(|w| {
        !w.contains('=') && Path::new(w.trim_matches('"')).file_name() != Some("env".as_ref())
    })?;
    let first = first.trim_matches('"');
    Path::new(first).file_name()?.to_str()
}

/// The `Icon=` of an installed desktop entry that runs `program`.
pub fn host_icon(program: &str, dirs: &[PathBuf]) -> Option<String> {
    let program = Path::new(program).file_name()?.to_str()?;
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(d.join("applications")) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "desktop"))
        {
            let Ok(text) = std::fs::read_to_string(p) else {
                continue;
            };
            if entry_value(&text, "Exec").and_then(exec_program) == Some(program) {
                if let Some(icon) = entry_value(&text, "Icon") {
                    return Some(icon.to_string());
                }
            }
        }
    }
    None
}

/// Quotes an argument for a desktop entry's `Exec=` (the spec's rules).
fn exec_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@".contains(c))
    {
        return arg.to_string();
    }
    let mut q = String::from("\"");
    for c in arg.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q.replace('%', "%%")
}

/// The desktop entry for app `name` with profile `p`, run by `vmapp`.
pub fn entry(name: &str, p: &Profile, vmapp: &Path, dirs: &[PathBuf]) -> String {
    let icon = p
        .command
        .first()
        .and_then(|c| host_icon(c, dirs))
        .unwrap_or_else(|| "application-x-executable".into());
    let exec = [vmapp.display().to_string(), "launch".into(), name.into()]
        .iter()
        .map(|a| exec_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "[Desktop Entry]\nType=Application\nName={name} (in a VM)\n\
         Comment=Runs {name} isolated in its own microVM (vmapp)\n\
         Exec={exec}\nIcon={icon}\nTerminal=false\nCategories=Utility;\n\
         X-Vmapp-App={name}\n"
    )
}

/// Where the entry of app `name` goes.
pub fn entry_path(name: &str) -> Result<PathBuf, ProfileError> {
    profile::check_name(name)?;
    Ok(profile::data_home()?
        .join("applications")
        .join(format!("vmapp-{name}.desktop")))
}

/// Writes (or with `remove`, removes) the entry of app `name`; returns its
/// path.
pub fn install(name: &str, remove: bool, vmapp: &Path) -> Result<PathBuf, ProfileError> {
    let path = entry_path(name)?;
    let io = |source| ProfileError::Io {
        path: path.clone(),
        source,
    };
    if remove {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => return Ok(path),
        }
    }
    let p = Profile::load(name)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&path, entry(name, &p, vmapp, &data_dirs())).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_names_the_vm_and_takes_the_host_apps_icon() {
        let t = tempfile::tempdir().unwrap();
        let apps = t.path().join("applications");
        std::fs::create_dir_all(&apps).unwrap();
        std::fs::write(
            apps.join("org.example.Foot.desktop"),
            "[Desktop Entry]\nName=Foot\nExec=/usr/bin/foot --server %U\nIcon=foot\n\
             [Desktop Action new]\nExec=other\nIcon=wrong\n",
        )
        .unwrap();
        std::fs::write(
            apps.join("env.desktop"),
            "[Desktop Entry]\nExec=env A=1 gimp\nIcon=gimp\n",
        )
        .unwrap();
        let dirs = vec![t.path().to_path_buf()];
        assert_eq!(host_icon("foot", &dirs).as_deref(), Some("foot"));
        assert_eq!(host_icon("/usr/bin/gimp", &dirs).as_deref(), Some("gimp"));
        assert_eq!(host_icon("nothing", &dirs), None);
        let p = Profile {
            command: vec!["foot".into()],
            ..Profile::default()
        };
        let e = entry("term", &p, Path::new("/opt/my apps/vmapp"), &dirs);
        assert!(e.contains("\nName=term (in a VM)\n"), "{e}");
        assert!(
            e.contains("\nExec=\"/opt/my apps/vmapp\" launch term\n"),
            "{e}"
        );
        assert!(e.contains("\nIcon=foot\n"), "{e}");
        let p = Profile {
            command: vec!["unknown-app".into()],
            ..Profile::default()
        };
        assert!(
            entry("x", &p, Path::new("/v"), &dirs).contains("\nIcon=application-x-executable\n")
        );
    }

    /// freedesktop.org's own validator accepts the entries, quoted paths
    /// and odd app names included.
    #[test]
    fn desktop_file_validate_accepts_the_entries() {
        let t = tempfile::tempdir().unwrap();
        let p = Profile {
            command: vec!["foot".into()],
            ..Profile::default()
        };
        for (i, (name, vmapp)) in [
            ("term", "/usr/bin/vmapp"),
            ("my-app_2.0", "/opt/my apps/vm$app 100%"),
        ]
        .into_iter()
        .enumerate()
        {
            let path = t.path().join(format!("vmapp-{i}.desktop"));
            std::fs::write(&path, entry(name, &p, Path::new(vmapp), &[])).unwrap();
            let o = std::process::Command::new("desktop-file-validate")
                .arg(&path)
                .output()
                .expect("desktop-file-validate is required (apt-get install desktop-file-utils)");
            let msg = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success() && msg.trim().is_empty(), "{name}: {msg}");
        }
    }

    #[test]
    fn exec_arguments_are_quoted() {
        assert_eq!(exec_quote("plain-1.0"), "plain-1.0");
        assert_eq!(exec_quote("a b"), "\"a b\"");
        assert_eq!(exec_quote("$x\"y"), "\"\\$x\\\"y\"");
        assert_eq!(exec_quote("50%"), "\"50%%\"");
    }
}
