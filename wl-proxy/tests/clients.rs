//! Real clients through the proxy, against real sway and weston (headless).

mod common;

use std::time::{Duration, Instant};

use common::*;
use wl_proxy::Policy;

const T: Duration = Duration::from_secs(30);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Through the proxy, wayland-info lists exactly the compositor's globals
/// that the policy allows.
fn lists_allowed_globals_only(comp: &Compositor) {
    require(&["wayland-info"]);
    let direct = globals_of(&output_within(comp.client("wayland-info"), T));
    let proxied = globals_of(&output_within(comp.proxied(&[], &["wayland-info"]), T));
    let policy = Policy::default();
    let mut expected: Vec<String> = direct
        .iter()
        .filter(|g| policy.advertise(g, 1).is_some())
        .cloned()
        .collect();
    expected.sort();
    let mut got = proxied.clone();
    got.sort();
    assert_eq!(got, expected, "{}: direct {direct:?}", comp.kind);
    assert!(got.contains(&"wl_compositor".to_string()));
    assert!(got.contains(&"xdg_wm_base".to_string()));
    for g in &proxied {
        assert!(!policy.deny.contains(g), "{g} leaked");
    }
    // The compositor does advertise privileged globals; the proxy hides them.
    assert!(direct.iter().any(|g| policy.deny.contains(g)), "{direct:?}");
}

#[test]
fn sway_wayland_info_sees_only_allowed_globals() {
    let sway = Compositor::sway();
    lists_allowed_globals_only(&sway);
}

#[test]
fn weston_wayland_info_sees_only_allowed_globals() {
    let weston = Compositor::weston();
    lists_allowed_globals_only(&weston);
}

#[test]
fn wtype_and_grim_find_nothing_to_abuse() {
    require(&["wtype", "grim"]);
    let sway = Compositor::sway();
    let shot = sway.dir.path().join("shot.png");
    // Directly, both work against sway.
    let mut g = sway.client("grim");
    g.arg(&shot);
    let o = output_within(g, T);
    assert!(o.status.success(), "grim direct: {}", stderr(&o));
    assert!(std::fs::metadata(&shot).unwrap().len() > 0);
    let mut w = sway.client("wtype");
    w.arg("hello");
    let o = output_within(w, T);
    assert!(o.status.success(), "wtype direct: {}", stderr(&o));

    let o = output_within(sway.proxied(&[], &["wtype", "hello"]), T);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("virtual keyboard"), "{}", stderr(&o));
    let shot2 = sway.dir.path().join("shot2.png");
    let o = output_within(sway.proxied(&[], &["grim", shot2.to_str().unwrap()]), T);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("screencopy"), "{}", stderr(&o));
    assert!(!shot2.exists());
}

/// wl-paste through the proxy gets no data-control. Its fallback maps a
/// surface to gain keyboard focus; on a seat with a keyboard the compositor
/// gives it focus and with it the selection, unless clipboard = "deny".
#[test]
fn wl_paste_needs_focus_and_clipboard_deny_stops_it() {
    require(&["wl-copy", "wl-paste", "wtype"]);
    let sway = Compositor::sway();
    // Put a secret on the clipboard directly (wl-copy serves it in the background).
    // (Its server process keeps running, so no pipes: they would never close.)
    let mut copy = sway.client("wl-copy");
    copy.arg("s3cret-clip")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    assert!(copy.status().unwrap().success(), "wl-copy failed");
    let o = output_within(sway.client("wl-paste"), T);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "s3cret-clip");

    // Headless sway has no keyboard: the fallback cannot get focus.
    let o = output_within(sway.proxied(&[], &["wl-paste"]), T);
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stdout).contains("s3cret"));
    assert!(stderr(&o).contains("no keyboard"), "{}", stderr(&o));

    // With a (virtual) keyboard on the seat, focus is granted to the new
    // surface and the selection with it: this is what "allow" means.
    let mut kb = sway.client("wtype");
    kb.args(["-s", "20000", "x"]);
    let mut kb = kb.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = output_within(sway.proxied(&[], &["wl-paste"]), T);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "s3cret-clip",
        "{}",
        stderr(&o)
    );

    // clipboard = "deny": no data device at all.
    let pol = sway.dir.path().join("deny.toml");
    std::fs::write(&pol, "clipboard = \"deny\"\n").unwrap();
    let o = output_within(
        sway.proxied(&["--policy", pol.to_str().unwrap()], &["wl-paste"]),
        T,
    );
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stdout).contains("s3cret"));
    let _ = kb.kill();
    let _ = kb.wait();
    let _ = std::process::Command::new("pkill")
        .args(["-f", "wl-copy s3cret-clip"])
        .status();
}

#[test]
fn foot_maps_a_tagged_window_and_keeps_working() {
    require(&["foot", "swaymsg"]);
    let sway = Compositor::sway();
    let out = sway.dir.path().join("foot-ran");
    let script = format!("sleep 2; echo alive > {}; sleep 2", out.display());
    let mut foot = sway.proxied(&["--tag", "work"], &["foot", "-e", "sh", "-c", &script]);
    foot.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = foot.spawn().unwrap();
    let deadline = Instant::now() + T;
    let tree = loop {
        let tree = sway.swaymsg(&["-t", "get_tree"]);
        if tree.contains("\"app_id\": \"work:foot\"") {
            break tree;
        }
        assert!(Instant::now() < deadline, "no tagged window: {tree}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(tree.contains("\"name\": \"[work] foot\""), "{tree}");
    assert!(!tree.contains("\"name\": \"foot\""), "{tree}");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "foot did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "foot exited with {status}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "alive");
}
