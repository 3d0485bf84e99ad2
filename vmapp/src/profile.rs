//! App profiles: a named VM's settings, kept between runs in
//! `$XDG_CONFIG_HOME/vmapp/apps/NAME.toml` (default `~/.config`), written by
//! `vmapp create NAME [options] -- COMMAND…`, run by `vmapp launch NAME`,
//! removed by `vmapp destroy NAME`.
//!
//! The schema (every key optional except `command`; unknown keys are errors):
//!
//! ```toml
//! command = ["foot", "--title", "x"]   # what runs in the guest
//! memory = 1024                        # MiB
//! cpus = 2
//! host_root = true                     # the host's programs, see README
//! home = "/somewhere"                  # host-root: the guest's $HOME (default: the app's data directory)
//! expose = ["/opt/data,rw"]            # host-root: more host trees
//! disks = ["/images/x.img,ro"]
//! shares = ["/srv/music:music,ro"]
//! env = ["LANG=C.UTF-8"]
//! workdir = "/tmp"
//! wayland = true                       # false: no windows; a string: the compositor's socket
//! clipboard = "deny"                   # or "allow"
//! x11 = false                          # no X display for X11 apps (default: on with windows)
//! tag = "browser"                      # the windows' label (default: the profile's name)
//! wl_policy = "/path/policy.toml"
//! seccomp = "kill"                     # or "log", "off"
//! jail = "on"                          # or "off"
//! audio = "playback"                   # or "off", "full" (playback and recording)
//! ```
//!
//! A profile turns into `vmapp launch` options ([`Profile::launch_args`]);
//! options given on the command line come after them and win.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading, writing or naming profiles.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A name that cannot be a file name of its own.
    #[error(
        "bad app name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
    )]
    BadName(String),
    /// No profile of that name.
    #[error("no app named {name} ({} does not exist; create it with `vmapp create {name} -- COMMAND`)", path.display())]
    Missing {
        /// The app's name.
        name: String,
        /// Where its profile would be.
        path: PathBuf,
    },
    /// The profile file cannot be parsed or has a bad value.
    #[error("profile {}: {why}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong (the key and the value, from the parser).
        why: String,
    },
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No home directory to put profiles under.
    #[error("neither XDG_CONFIG_HOME/XDG_DATA_HOME nor HOME is set")]
    NoHome,
}

/// `wayland = true|false|"SOCKET"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Wayland {
    /// On (the session's compositor) or off.
    On(bool),
    /// This compositor socket.
    Socket(String),
}

/// One app's settings (see the module documentation for the schema).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Guest memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u8>,
    /// Host-root mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_root: bool,
    /// The guest's `$HOME` in host-root mode (default: the app's data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    /// More host trees in host-root mode, `HOSTDIR[,rw]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// Disks, `PATH[,ro][,serial=ID][,cache=…][,aio=…]` (as `--disk`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// Shared directories, `HOSTDIR:TAG[,ro][,path=GUESTDIR]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<String>,
    /// The command's environment, `KEY=VALUE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The command's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Windows on the host's desktop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wayland: Option<Wayland>,
    /// `false`: no X display in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x11: Option<bool>,
    /// `allow` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clipboard: Option<String>,
    /// The windows' label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A wl-proxy policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wl_policy: Option<PathBuf>,
    /// `kill`, `log` or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// `on` or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<String>,
    /// `off`, `playback` or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    /// A network (NAT through passt), on when the VM starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// With `network`: the guest may reach the host's loopback services.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network_host_loopback: bool,
    /// Host loopback ports forwarded into the guest, `HOSTPORT:GUESTPORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

/// Refuses names with `/`, `..`, control characters or anything else that
/// would not be a plain file name.
pub fn check_name(name: &str) -> Result<(), ProfileError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ProfileError::BadName(name.to_string()))
    }
}

fn xdg(var: &str, fallback: &str) -> Result<PathBuf, ProfileError> {
    match std::env::var_os(var).filter(|v| Path::new(v).is_absolute()) {
        Some(v) => Ok(PathBuf::from(v)),
        None => std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(fallback))
            .ok_or(ProfileError::NoHome),
    }
}

/// Where the profile of `name` lives.
pub fn path(name: &str) -> Result<PathBuf, ProfileError> {
    check_name(name)?;
    Ok(xdg("XDG_CONFIG_HOME", ".config")?
        .join("vmapp/apps")
        .join(format!("{name}.toml")))
}

/// The names of the saved profiles, sorted (files that are not a valid
/// profile name with `.toml` are left out).
pub fn names() -> Result<Vec<String>, ProfileError> {
    let dir = xdg("XDG_CONFIG_HOME", ".config")?.join("vmapp/apps");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let name = n.strip_suffix(".toml")?.to_string();
            check_name(&name).is_ok().then_some(name)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// `$XDG_DATA_HOME` (default `~/.local/share`).
pub fn data_home() -> Result<PathBuf, ProfileError> {
    xdg("XDG_DATA_HOME", ".local/share")
}

/// The app's data directory (`$XDG_DATA_HOME/vmapp/NAME`), whose `home` is
/// the guest's `$HOME` in host-root mode.
pub fn data_dir(name: &str) -> Result<PathBuf, ProfileError> {
    check_name(name)?;
    Ok(data_home()?.join("vmapp").join(name))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Profile {
    /// Parses a profile's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ProfileError> {
        let bad = |why: String| ProfileError::Bad {
            path: path.to_path_buf(),
            why,
        };
        let p: Profile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        p.check().map_err(bad)?;
        Ok(p)
    }

    /// Values the parser cannot check.
    fn check(&self) -> Result<(), String> {
        let one_of = |key: &str, v: &Option<String>, allowed: &[&str]| match v {
            Some(v) if !allowed.contains(&v.as_str()) => Err(format!(
                "{key} = {v:?}: must be one of {}",
                allowed.join(", ")
            )),
            _ => Ok(()),
        };
        if self.command.first().is_none_or(|c| c.is_empty()) {
            return Err("command must name a program: command = [\"PROGRAM\", \"ARG\", …]".into());
        }
        if self.memory == Some(0) || self.cpus == Some(0) {
            return Err("memory and cpus must be more than 0".into());
        }
        one_of("clipboard", &self.clipboard, &["allow", "deny"])?;
        one_of("seccomp", &self.seccomp, &["kill", "log", "off"])?;
        one_of("jail", &self.jail, &["on", "off"])?;
        one_of("audio", &self.audio, &["off", "playback", "full"])?;
        if let Some(e) = self.env.iter().find(|e| !e.contains('=')) {
            return Err(format!("env entry {e:?} is not KEY=VALUE"));
        }
        for p in &self.publish {
            p.parse::<vmm::net::Publish>().map_err(|e| e.to_string())?;
        }
        if !self.network && (self.network_host_loopback || !self.publish.is_empty()) {
            return Err("network_host_loopback and publish need network = true".into());
        }
        Ok(())
    }

    /// Reads the profile of `name`.
    pub fn load(name: &str) -> Result<Self, ProfileError> {
        let path = path(name)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProfileError::Missing {
                    name: name.to_string(),
                    path,
                })
            }
            Err(e) => return Err(io(&path)(e)),
        };
        Self::parse(&text, &path)
    }

    /// Writes the profile of `name` (atomically); returns its path.
    pub fn save(&self, name: &str) -> Result<PathBuf, ProfileError> {
        let path = path(name)?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let text = toml::to_string(self).map_err(|e| ProfileError::Bad {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(
            &tmp,
            format!("# vmapp app profile (schema: vmapp/src/profile.rs)\n{text}"),
        )
        .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(path)
    }

    /// The profile as `vmapp launch` options (without the command). In
    /// host-root mode without a `home`, `data_home` is the guest's `$HOME`.
    pub fn launch_args(&self, name: &str, data_home: Option<&Path>) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |k: &str, v: String| {
            a.push(format!("--{k}"));
            a.push(v);
        };
        if let Some(m) = self.memory {
            opt("memory", m.to_string());
        }
        if let Some(c) = self.cpus {
            opt("cpus", c.to_string());
        }
        for (k, list) in [
            ("expose", &self.expose),
            ("disk", &self.disks),
            ("share", &self.shares),
            ("env", &self.env),
            ("publish", &self.publish),
        ] {
            for v in list {
                opt(k, v.clone());
            }
        }
        let home = self
            .home
            .as_deref()
            .or(data_home.filter(|_| self.host_root));
        if let Some(h) = home {
            opt("home", h.display().to_string());
        }
        for (k, v) in [
            ("workdir", &self.workdir),
            ("clipboard", &self.clipboard),
            ("seccomp", &self.seccomp),
            ("jail", &self.jail),
            ("audio", &self.audio),
        ] {
            if let Some(v) = v {
                opt(k, v.clone());
            }
        }
        opt("tag", self.tag.clone().unwrap_or_else(|| name.to_string()));
        if let Some(p) = &self.wl_policy {
            opt("wl-policy", p.display().to_string());
        }
        match &self.wayland {
            Some(Wayland::On(false)) => a.push("--no-wayland".into()),
            Some(Wayland::Socket(s)) => a.push(format!("--wayland={s}")),
            Some(Wayland::On(true)) => a.push("--wayland".into()),
            None => {}
        }
        if self.x11 == Some(false) {
            a.push("--no-x11".into());
        }
        if self.host_root {
            a.push("--host-root".into());
        }
        if self.network {
            a.push("--net".into());
        }
        if self.network_host_loopback {
            a.push("--net-host-loopback".into());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse(text, Path::new("/p/x.toml"))
    }

    #[test]
    fn names_are_plain_file_names() {
        for ok in ["firefox", "my-app_2", "a.b"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "..",
            "tab\there",
            "nl\n",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_profile_round_trips_and_becomes_launch_options() {
        let p = parse(
            r#"command = ["foot", "-e", "sh"]
memory = 1024
cpus = 2
host_root = true
expose = ["/opt/x,rw"]
env = ["A=1"]
wayland = "/run/user/1000/wayland-1"
clipboard = "deny"
"#,
        )
        .unwrap();
        let back = parse(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let args = p.launch_args("term", Some(Path::new("/d/term/home")));
        let want = [
            "--memory",
            "1024",
            "--cpus",
            "2",
            "--expose",
            "/opt/x,rw",
            "--env",
            "A=1",
            "--home",
            "/d/term/home",
            "--clipboard",
            "deny",
            "--tag",
            "term",
            "--wayland=/run/user/1000/wayland-1",
            "--host-root",
        ];
        assert_eq!(args, want);
        let p = parse("command = [\"x\"]\nnetwork = true\npublish = [\"8080:80\"]").unwrap();
        assert_eq!(
            p.launch_args("n", None),
            ["--publish", "8080:80", "--tag", "n", "--net"]
        );
        // Not host-root: no data home.
        let p = parse("command = [\"true\"]\nwayland = false").unwrap();
        assert_eq!(
            p.launch_args("t", Some(Path::new("/d"))),
            ["--tag", "t", "--no-wayland"]
        );
    }

    #[test]
    fn bad_profiles_name_the_file_the_key_and_the_problem() {
        let cases = [
            ("command = [\"x\"]\nmemroy = 5", "unknown field `memroy`"),
            ("command = [\"x\"]\nmemory = \"lots\"", "invalid type"),
            (
                "command = [\"x\"]\nclipboard = \"maybe\"",
                "clipboard = \"maybe\"",
            ),
            ("command = [\"x\"]\ncpus = 0", "more than 0"),
            ("command = [\"x\"]\nenv = [\"NOEQUALS\"]", "NOEQUALS"),
            ("memory = 5", "missing field `command`"),
            ("command = []", "command must name a program"),
            ("command = [\"x\"\n", "expected"),
            (
                "command = [\"x\"]\npublish = [\"80\"]",
                "HOSTPORT:GUESTPORT",
            ),
            (
                "command = [\"x\"]\npublish = [\"8080:80\"]",
                "need network = true",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("profile /p/x.toml: "), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
