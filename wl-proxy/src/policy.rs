//! The proxy's policy: which globals a client may see and bind, at which
//! version, and the resource limits. Read from TOML; the built-in default is
//! `default-policy.toml`, and a file only overrides the keys it sets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::protocol::{self, IfaceId};

/// The built-in policy text.
pub const DEFAULT_POLICY: &str = include_str!("../default-policy.toml");

/// Errors reading a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown keys.
    #[error("invalid policy: {0}")]
    Toml(#[from] toml::de::Error),
    /// A limit is zero or out of range.
    #[error("invalid policy: {0}")]
    Limit(&'static str),
}

/// How globals not named in the policy are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only `[allow]` globals are advertised.
    Allowlist,
    /// Everything the proxy can parse except the deny list is advertised.
    Denylist,
}

/// Whether clients get the clipboard and primary selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clipboard {
    /// `wl_data_device_manager` and primary selection are advertised if allowed.
    Allow,
    /// They are hidden.
    Deny,
}

/// Globals hidden by `clipboard = "deny"`.
pub const CLIPBOARD_GLOBALS: &[&str] = &[
    "wl_data_device_manager",
    "zwp_primary_selection_device_manager_v1",
    "gtk_primary_selection_device_manager",
];

/// Resource limits, per client unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Clients per proxy.
    pub max_clients: usize,
    /// Objects (live, and destroyed but not yet acknowledged) per client.
    pub max_objects: usize,
    /// Bytes buffered per direction before the proxy stops reading the sender.
    pub max_buffered_bytes: usize,
    /// Fds buffered per direction.
    pub max_buffered_fds: usize,
    /// Live `wl_shm` pools (the proxy keeps each one's fd).
    pub max_pools: usize,
    /// How long a client may leave a message incomplete.
    pub partial_message_timeout_ms: u64,
    /// Longest `xdg_toplevel` title after tagging, in bytes.
    pub max_title_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mode: Option<Mode>,
    clipboard: Option<Clipboard>,
    deny: Option<Vec<String>>,
    allow: Option<BTreeMap<String, u32>>,
    limits: Option<PartialLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialLimits {
    max_clients: Option<usize>,
    max_objects: Option<usize>,
    max_buffered_bytes: Option<usize>,
    max_buffered_fds: Option<usize>,
    max_pools: Option<usize>,
    partial_message_timeout_ms: Option<u64>,
    max_title_bytes: Option<usize>,
}

/// A parsed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Allowlist or denylist.
    pub mode: Mode,
    /// Clipboard switch.
    pub clipboard: Clipboard,
    /// Globals never advertised.
    pub deny: BTreeSet<String>,
    /// Allowed globals with their version caps.
    pub allow: BTreeMap<String, u32>,
    /// Resource limits.
    pub limits: Limits,
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_toml(DEFAULT_POLICY).unwrap_or_else(|e| unreachable!("built-in policy: {e}"))
    }
}

impl Policy {
    /// The built-in policy with the keys `text` sets replaced.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let f: File = toml::from_str(text)?;
        let base = if std::ptr::eq(text, DEFAULT_POLICY) {
            None
        } else {
            Some(Self::default())
        };
        let missing = "built-in policy lacks a key";
        let lim = f.limits;
        let pick = |get: fn(&PartialLimits) -> Option<usize>, base: Option<usize>| {
            lim.as_ref()
                .and_then(get)
                .or(base)
                .ok_or(PolicyError::Limit(missing))
        };
        let bl = base.as_ref().map(|b| b.limits);
        let limits = Limits {
            max_clients: pick(|l| l.max_clients, bl.map(|b| b.max_clients))?,
            max_objects: pick(|l| l.max_objects, bl.map(|b| b.max_objects))?,
            max_buffered_bytes: pick(|l| l.max_buffered_bytes, bl.map(|b| b.max_buffered_bytes))?,
            max_buffered_fds: pick(|l| l.max_buffered_fds, bl.map(|b| b.max_buffered_fds))?,
            max_pools: pick(|l| l.max_pools, bl.map(|b| b.max_pools))?,
            max_title_bytes: pick(|l| l.max_title_bytes, bl.map(|b| b.max_title_bytes))?,
            partial_message_timeout_ms: lim
                .as_ref()
                .and_then(|l| l.partial_message_timeout_ms)
                .or(bl.map(|b| b.partial_message_timeout_ms))
                .ok_or(PolicyError::Limit(missing))?,
        };
        if limits.max_clients == 0
            || limits.max_objects == 0
            || limits.partial_message_timeout_ms == 0
        {
            return Err(PolicyError::Limit("limits must be above zero"));
        }
        if limits.max_buffered_bytes < 2 * crate::wire::MAX_MESSAGE {
            return Err(PolicyError::Limit(
                "max_buffered_bytes must be at least 8192",
            ));
        }
        if !(28..=4096).contains(&limits.max_buffered_fds) {
            return Err(PolicyError::Limit(
                "max_buffered_fds must be within 28..=4096",
            ));
        }
        if !(1..=4096).contains(&limits.max_pools) {
            return Err(PolicyError::Limit("max_pools must be within 1..=4096"));
        }
        if limits.partial_message_timeout_ms > 3_600_000 {
            return Err(PolicyError::Limit(
                "partial_message_timeout_ms must be at most an hour",
            ));
        }
        if !(32..=2048).contains(&limits.max_title_bytes) {
            return Err(PolicyError::Limit(
                "max_title_bytes must be within 32..=2048",
            ));
        }
        Ok(Policy {
            mode: f
                .mode
                .or(base.as_ref().map(|b| b.mode))
                .ok_or(PolicyError::Limit(missing))?,
            clipboard: f
                .clipboard
                .or(base.as_ref().map(|b| b.clipboard))
                .ok_or(PolicyError::Limit(missing))?,
            deny: match f.deny {
                Some(d) => d.into_iter().collect(),
                None => base.as_ref().map(|b| b.deny.clone()).unwrap_or_default(),
            },
            allow: match f.allow {
                Some(a) => a,
                None => base.map(|b| b.allow).unwrap_or_default(),
            },
            limits,
        })
    }

    /// Reads a policy file.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Whether a global `name` offered by the compositor at `version` is shown
    /// to clients, and at which version.
    pub fn advertise(&self, name: &str, version: u32) -> Option<(IfaceId, u32)> {
        if self.deny.contains(name) {
            return None;
        }
        if self.clipboard == Clipboard::Deny && CLIPBOARD_GLOBALS.contains(&name) {
            return None;
        }
        let cap = match (self.mode, self.allow.get(name)) {
            (_, Some(&cap)) => cap,
            (Mode::Allowlist, None) => return None,
            (Mode::Denylist, None) => u32::MAX,
        };
        // A global the proxy cannot parse cannot be forwarded safely.
        let id = protocol::lookup(name)?;
        let v = version.min(cap).min(protocol::interface(id).version);
        (v > 0).then_some((id, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allows_the_curated_set_and_denies_privileged_globals() {
        let p = Policy::default();
        assert_eq!(p.mode, Mode::Allowlist);
        assert_eq!(p.advertise("wl_compositor", 6).map(|a| a.1), Some(6));
        assert_eq!(p.advertise("wl_compositor", 3).map(|a| a.1), Some(3));
        assert_eq!(p.advertise("xdg_wm_base", 99).map(|a| a.1), Some(6));
        for g in [
            "zwp_virtual_keyboard_manager_v1",
            "zwlr_virtual_pointer_manager_v1",
            "zwlr_data_control_manager_v1",
            "zwlr_screencopy_manager_v1",
            "zwlr_export_dmabuf_manager_v1",
            "zwlr_foreign_toplevel_manager_v1",
            "zwlr_layer_shell_v1",
            "zwlr_gamma_control_manager_v1",
            "zwlr_output_manager_v1",
            "zwlr_output_power_manager_v1",
            "zwp_input_method_manager_v2",
            "zwlr_input_inhibit_manager_v1",
            "zwp_keyboard_shortcuts_inhibit_manager_v1",
            "ext_session_lock_manager_v1",
            "wp_security_context_manager_v1",
        ] {
            assert!(p.deny.contains(g), "{g}");
            assert_eq!(p.advertise(g, 1), None, "{g}");
        }
        // Not in the allowlist, not denied: hidden in allowlist mode.
        assert_eq!(p.advertise("wp_tearing_control_manager_v1", 1), None);
        assert_eq!(p.advertise("unknown_global", 1), None);
    }

    #[test]
    fn a_file_overrides_only_what_it_sets() {
        let p = Policy::from_toml("clipboard = \"deny\"\n[limits]\nmax_objects = 10\n").unwrap();
        assert_eq!(p.advertise("wl_data_device_manager", 3), None);
        assert_eq!(
            p.advertise("zwp_primary_selection_device_manager_v1", 1),
            None
        );
        assert!(p.advertise("wl_seat", 7).is_some());
        assert_eq!(p.limits.max_objects, 10);
        assert_eq!(p.limits.max_clients, Policy::default().limits.max_clients);
        assert!(p.deny.contains("zwlr_screencopy_manager_v1"));
    }

    #[test]
    fn deny_wins_over_allow_in_both_modes() {
        let p =
            Policy::from_toml("mode = \"denylist\"\ndeny = [\"wl_shm\"]\n[allow]\nwl_shm = 1\n")
                .unwrap();
        assert_eq!(p.advertise("wl_shm", 1), None);
        // Denylist mode: anything parseable and not denied.
        assert_eq!(p.advertise("zwlr_layer_shell_v1", 4).map(|a| a.1), Some(4));
        assert_eq!(p.advertise("not_in_tables", 1), None);
    }

    #[test]
    fn bad_files_are_rejected() {
        assert!(Policy::from_toml("mode = \"everything\"").is_err());
        assert!(Policy::from_toml("colour = 1").is_err());
        assert!(Policy::from_toml("[limits]\nmax_clients = 0").is_err());
        assert!(Policy::from_toml("[limits]\nmax_buffered_bytes = 100").is_err());
        assert!(Policy::from_toml("[limits]\nbogus = 1").is_err());
    }
}
