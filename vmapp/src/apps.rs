//! `vmapp create NAME …`, `vmapp launch NAME …` and `vmapp destroy NAME`:
//! the command-line side of app profiles ([`vmapp::profile`]).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use vmapp::profile::{self, Profile, Wayland};

use crate::Launch;

/// `vmapp launch` options alone, to read what `create` was given.
#[derive(Parser)]
#[command(name = "vmapp create", args_override_self = true)]
struct LaunchOnly {
    #[command(flatten)]
    launch: Launch,
}

/// The name in `vmapp launch|create|destroy NAME …`: the word after the
/// subcommand, when it is not an option.
pub fn app_name(args: &[String]) -> Option<&str> {
    match args.get(1).map(String::as_str) {
        Some("launch" | "create" | "destroy" | "desktop") => args
            .get(2)
            .map(String::as_str)
            .filter(|a| !a.starts_with('-')),
        _ => None,
    }
}

/// `vmapp launch NAME [options] [-- COMMAND…]` as plain `vmapp launch`
/// arguments: the profile's options first, the command line's after them
/// (so they win), and the profile's command unless one is given. In
/// host-root mode without a `home`, the app's data directory's `home` is
/// made (0700) and becomes the guest's `$HOME`.
pub fn expand_launch(args: &[String], name: &str) -> anyhow::Result<Vec<String>> {
    let p = Profile::load(name)?;
    let data_home = profile::data_dir(name)?.join("home");
    if p.host_root && p.home.is_none() {
        std::fs::create_dir_all(&data_home)
            .with_context(|| format!("the app's home {}", data_home.display()))?;
        std::fs::set_permissions(
            &data_home,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .with_context(|| format!("the app's home {}", data_home.display()))?;
    }
    let mut out = vec![args[0].clone(), "launch".into(), format!("--app={name}")];
    out.extend(p.launch_args(name, Some(&data_home)));
    let rest = &args[3..];
    out.extend(rest.iter().cloned());
    if !rest.iter().any(|a| a == "--") {
        out.push("--".into());
        out.extend(p.command.iter().cloned());
    }
    Ok(out)
}

/// The profile `create` writes: the command and every option given that a
/// profile keeps.
fn from_launch(a: &Launch) -> anyhow::Result<Profile> {
    let not_kept = [
        ("--kernel", a.kernel.is_some()),
        ("--initramfs", a.initramfs.is_some()),
        ("--cmdline", !a.cmdline.is_empty()),
        ("--console", a.console.is_some()),
        ("--vsock", a.vsock.is_some()),
        ("--keep-running", a.keep_running),
        ("--bzimage", a.bzimage),
        ("--app", a.app.is_some()),
    ];
    if let Some((opt, _)) = not_kept.iter().find(|(_, given)| *given) {
        bail!("{opt} is not kept in app profiles; give it to `vmapp launch NAME` instead");
    }
    if a.command.is_empty() {
        bail!("an app needs a command: vmapp create NAME [options] -- COMMAND [ARGS…]");
    }
    Ok(Profile {
        command: a.command.clone(),
        memory: (a.memory != 512).then_some(a.memory),
        cpus: (a.cpus != 1).then_some(a.cpus),
        host_root: a.host_root,
        home: a.home.clone(),
        expose: a.expose.clone(),
        disks: a.disks.clone(),
        shares: a.shares.clone(),
        env: a.envs.clone(),
        workdir: a.workdir.clone(),
        wayland: match (&a.wayland, a.no_wayland) {
            (_, true) => Some(Wayland::On(false)),
            (Some(s), _) if s.is_empty() => Some(Wayland::On(true)),
            (Some(s), _) => Some(Wayland::Socket(s.clone())),
            (None, false) => None,
        },
        x11: a.no_x11.then_some(false),
        clipboard: a.clipboard.clone(),
        tag: a.tag.clone(),
        wl_policy: a.wl_policy.clone(),
        seccomp: match a.seccomp {
            seccomp_policies::Mode::Kill => None,
            seccomp_policies::Mode::Log => Some("log".into()),
            seccomp_policies::Mode::Off => Some("off".into()),
        },
        jail: (a.jail != "on").then(|| a.jail.clone()),
        audio: (a.audio != "playback").then(|| a.audio.clone()),
        network: a.net,
        network_host_loopback: a.net_host_loopback,
        publish: a.publish.clone(),
    })
}

/// `vmapp create NAME [launch options] -- COMMAND…`.
pub fn create(args: &[String], name: &str) -> anyhow::Result<()> {
    profile::check_name(name)?;
    let mut launch_args = vec!["vmapp create".to_string()];
    launch_args.extend(args[3..].iter().cloned());
    let a = LaunchOnly::try_parse_from(launch_args)?.launch;
    let p = from_launch(&a)?;
    let path = p.save(name)?;
    println!("{}", path.display());
    Ok(())
}

/// `vmapp desktop NAME [--remove]`: writes (removes) the app's menu entry.
pub fn desktop(args: &[String], name: &str) -> anyhow::Result<()> {
    let remove = match &args[3..] {
        [] => false,
        [r] if r == "--remove" => true,
        _ => bail!("vmapp desktop NAME [--remove]"),
    };
    let exe = std::env::current_exe().context("vmapp's own path")?;
    let path = vmapp::desktop::install(name, remove, &exe)?;
    println!("{}", path.display());
    Ok(())
}

/// `vmapp destroy NAME [--data] [--yes]`: removes the profile and, with
/// `--data`, the app's data directory (asking first on a terminal).
pub fn destroy(args: &[String], name: &str) -> anyhow::Result<()> {
    let path = profile::path(name)?;
    let flags = &args[3..];
    if let Some(f) = flags
        .iter()
        .find(|f| !matches!(f.as_str(), "--data" | "--yes"))
    {
        bail!("vmapp destroy NAME [--data] [--yes]: unknown argument {f}");
    }
    let data = flags.iter().any(|f| f == "--data");
    let yes = flags.iter().any(|f| f == "--yes");
    if !path.exists() {
        Profile::load(name)?;
    }
    let dir: Option<PathBuf> = data.then(|| profile::data_dir(name)).transpose()?;
    if let Some(d) = dir.as_ref().filter(|d| d.exists()) {
        if !yes {
            if !std::io::stdin().is_terminal() {
                bail!("removing {} needs --yes when vmapp cannot ask", d.display());
            }
            eprint!("vmapp: remove {} and everything in it? [y/N] ", d.display());
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("nothing removed");
            }
        }
        std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}
