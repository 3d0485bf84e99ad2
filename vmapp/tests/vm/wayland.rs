//! A guest app's windows on a real compositor: headless sway runs as an
//! unprivileged user where KVM boots stock kernels (inside the emulated KVM
//! host here), `vmapp launch --host-root` runs real clients in the VM, and
//! the test looks from the host side: sway's tree, `grim` against sway,
//! `wtype` typing on sway directly, `wl-copy`/`wl-paste` on the host.

use crate::common::{in_kvm, value, T, VMAPP};

/// Starts sway (as nobody) and defines `waitwin PATTERN OUT` (waits, at most
/// 300 s by the clock, until sway's tree matches; if it never does, prints
/// the VM's output file OUT (its console and the app's output) so that a
/// failure says why, instead of running into the script's own timeout).
const SWAY: &str = r#"
RT=$(mktemp -d /tmp/vmapp-wl.XXXXXX); H=$RT/home; mkdir -p $H /dev/shm; chmod 1777 /dev/shm
chown 65534:65534 $RT $H; chmod 700 $RT
printf 'output HEADLESS-1 resolution 1280x720\n' > $H/sway.conf
setpriv --reuid=65534 --regid=65534 --clear-groups env XDG_RUNTIME_DIR=$RT HOME=$H \
  WLR_BACKENDS=headless WLR_LIBINPUT_NO_DEVICES=1 WLR_RENDERER=pixman sway -c $H/sway.conf > $H/sway.log 2>&1 &
SWAYPID=$!
for i in $(seq 200); do [ -S $RT/wayland-1 ] && break; sleep 0.1; done
export WAYLAND_DISPLAY=$RT/wayland-1 SWAYSOCK=$(ls $RT/sway-ipc.*.sock)
# A keyboard on the seat for the whole run (a virtual one of the test's own,
# on sway directly): with it sway gives new windows keyboard focus. (`-s` is
# in milliseconds: a day, longer than any run.)
wtype -s 86400000 x &
HOLDER=$!
waitwin() {
  end=$(($(date +%s) + 300))
  while ! swaymsg -t get_tree | grep -q "$1"; do
    if [ $(date +%s) -gt $end ]; then
      echo "waitwin: no window matched $1 in 300 s; $2:"; tail -n 60 "$2" | sed 's/^/  | /'
      echo "sway.log:"; tail -n 20 $H/sway.log | sed 's/^/  | /'
      return 1
    fi
    sleep 0.2
  done
}
"#;

/// The script's start ([`SWAY`], then `$V`: `vmapp launch` in host-root
/// mode) and the path of our test client `wl-color`, which lives in the
/// build's directory: host-root mode shows it only because `$V` exposes it.
fn sway_and_launcher() -> (String, String, String) {
    let bins = std::path::Path::new(VMAPP)
        .parent()
        .expect("vmapp's directory");
    let prelude = format!(
        "{SWAY}\nV=\"timeout {T} {VMAPP} launch --memory 512 --host-root --expose {}\"\n",
        bins.display()
    );
    (
        prelude,
        bins.join("wl-color").display().to_string(),
        bins.join("x-color").display().to_string(),
    )
}

#[test]
fn guest_windows_pixels_keyboard_denied_clients_and_x11_apps() {
    let (prelude, c, xc) = sway_and_launcher();
    let script = format!(
        r#"{prelude}

# 1. The allowed globals, none of the denied or relay-hidden ones.
$V -- wayland-info > $RT/wi 2>&1; echo wi-rc=$?
echo globals=$(grep -o "interface: '[a-z_0-9]*'" $RT/wi | cut -d"'" -f2 | sort | tr '\n' ,)

# 2. Our wl_shm clients, two in one VM: tagged windows with their pixels.
#    Closed on the host (sway's `kill`: xdg_toplevel.close, which wl-color
#    obeys by exiting), hello's app ends and its window goes while stay (and
#    the VM) still runs: the relay ends that client's host connection, not
#    the VM's. Nothing here depends on how fast the emulated host is.
$V --tag paint -- sh -c '{c} --color 0000ff --title stay --seconds 900 & {c} --color 00ff00 --title hello --seconds 900; echo hello-rc=$?; wait' > $RT/color.out 2>&1 &
pid=$!
waitwin '"name": "\[paint\] hello"' $RT/color.out && waitwin '"name": "\[paint\] stay"' $RT/color.out && echo mapped=yes || {{ kill $pid $HOLDER $SWAYPID; exit 0; }}
echo appid=$(swaymsg -t get_tree | grep -o '"app_id": "paint:[^"]*"' | sort -u | tr '\n' ' ')
# Each window's pixel at the centre of its content (sway centres wl-color's
# 640x480 buffer in a larger tile). The sample counts only if the layout was
# the same before and after `grim`: a window that comes or goes re-tiles.
at() {{ swaymsg -t get_tree | python3 -c 'import json,sys
def walk(n):
    if n.get("name")=="[paint] '$1'":
        r=n["rect"]; w=n["window_rect"]; print("%d,%d 1x1"%(r["x"]+w["x"]+w["width"]//2,r["y"]+w["y"]+w["height"]//2)); sys.exit()
    for c in n.get("nodes",[])+n.get("floating_nodes",[]): walk(c)
walk(json.load(sys.stdin))'; }}
for w in stay hello; do
  for try in 1 2 3 4 5; do
    g=$(at $w); p=$(grim -g "$g" -t ppm - | tail -c 3 | od -An -tx1 | tr -d ' ')
    [ "$g" = "$(at $w)" ] && break
  done
  echo pixel-$w=$p
done
swaymsg '[title="hello$"] kill' > /dev/null
i=0; while swaymsg -t get_tree | grep -q '\[paint\] hello'; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
swaymsg -t get_tree | grep -q '\[paint\] hello' || echo hello-gone=yes
swaymsg -t get_tree | grep -q '\[paint\] stay' && kill -0 $pid && echo stay-alive=yes
swaymsg '[title="stay$"] kill' > /dev/null
wait $pid; echo color-rc=$?
grep hello-rc= $RT/color.out

# 3. Keyboard: typed on sway directly (a virtual keyboard of the test's own,
#    never through the proxy) into the guest's foot.
$V --tag kb -- sh -c 'foot sh -c "read l; echo \$l > /tmp/typed"; echo typed=$(cat /tmp/typed)' > $RT/kb.out 2>&1 &
pid=$!
waitwin '"app_id": "kb:' $RT/kb.out && echo foot-mapped=yes
sleep 3
wtype hello-from-host; wtype -k Return
wait $pid; echo foot-rc=$?
grep typed= $RT/kb.out

# 4. Clients that the proxy refuses: virtual keyboard and screen capture.
$V -- sh -c 'wtype x 2>&1; echo wtype-rc=$?; grim /tmp/o.png 2>&1; echo grim-rc=$?' > $RT/deny.out 2>&1
grep -E 'wtype-rc|grim-rc' $RT/deny.out
echo "deny-said=$(grep -v -e '-rc=' $RT/deny.out | tr '\n' ' ')"
cat $RT/kb.out | sed 's/^/kb: /'

# 5. X11 apps, through the guest's rootless Xwayland and the same proxy: our
#    raw X client x-color (its colour at its window's centre, its
#    override-redirect menu where X put it, relative to the window, then
#    fullscreen asked after its map), closed from sway (WM_DELETE_WINDOW: it
#    prints `deleted` and exits), xterm typed into on sway directly, a GTK 3
#    app forced to X11, and the clipboard.
$V --tag xapp -- sh -c '{xc} --color 00ffff --title xcolor --menu ff00ff --fullscreen-on-key --seconds 900; echo xc-rc=$?' > $RT/x.out 2>&1 &
pid=$!
waitwin '"name": "\[xapp\] xcolor"' $RT/x.out && echo x-mapped=yes
for i in $(seq 300); do grep -q menu= $RT/x.out && break; sleep 0.2; done
echo x-appid=$(swaymsg -t get_tree | grep -o '"app_id": "xapp:[^"]*"' | sort -u)
# The content's top-left corner and size, then the pixels at the centre and
# at the menu's centre (40 + 80, 60 + 60 from the corner).
xat() {{ swaymsg -t get_tree | python3 -c 'import json,sys
def walk(n):
    if n.get("name")=="[xapp] xcolor":
        r=n["rect"]; w=n["window_rect"]; x=r["x"]+w["x"]; y=r["y"]+w["y"]
        print("%d,%d 1x1 %d,%d 1x1"%(x+w["width"]//2,y+w["height"]//2,x+120,y+120)); sys.exit()
    for c in n.get("nodes",[])+n.get("floating_nodes",[]): walk(c)
walk(json.load(sys.stdin))'; }}
sleep 2
set -- $(xat)
echo x-centre=$(grim -g "$1 $2" -t ppm - | tail -c 3 | od -An -tx1 | tr -d ' ')
echo x-menu=$(grim -g "$3 $4" -t ppm - | tail -c 3 | od -An -tx1 | tr -d ' ')
# A key makes x-color ask for fullscreen after its map (_NET_WM_STATE):
# sway makes the window fullscreen and the window's property says so.
wtype f
for i in $(seq 300); do grep -q state=fullscreen $RT/x.out && break; sleep 0.2; done
echo x-fullscreen=$(swaymsg -t get_tree | python3 -c 'import json,sys
def walk(n):
    if n.get("name")=="[xapp] xcolor": print(n.get("fullscreen_mode")); sys.exit()
    for c in n.get("nodes",[])+n.get("floating_nodes",[]): walk(c)
walk(json.load(sys.stdin))')
grep -q '^state=fullscreen' $RT/x.out && echo x-state-fullscreen=yes
swaymsg '[title="xcolor$"] kill' > /dev/null
wait $pid; echo x-rc=$?
grep -q '^deleted' $RT/x.out && echo x-deleted=yes
grep xc-rc= $RT/x.out
# xterm: typed into once it has the focus (and time to start, emulated).
$V --tag xt -- sh -c 'xterm -T term -e sh -c "read l; echo \$l > /tmp/typed"; echo xtyped=$(cat /tmp/typed)' > $RT/xt.out 2>&1 &
pid=$!
waitwin '"name": "\[xt\] term"' $RT/xt.out && echo xterm-mapped=yes
for i in $(seq 600); do swaymsg -t get_tree | python3 -c 'import json,sys
def walk(n):
    if n.get("focused") and n.get("name")=="[xt] term": sys.exit(0)
    for c in n.get("nodes",[])+n.get("floating_nodes",[]): walk(c)
walk(json.load(sys.stdin)); sys.exit(1)' && break; sleep 0.2; done; sleep 15
wtype hello-x11; sleep 5; wtype -k Return
wait $pid; echo xterm-rc=$?
grep xtyped= $RT/xt.out
# GTK 3 on X11: a tagged window with its WM_CLASS as app id, closed from sway.
$V --tag gtk -- sh -c 'GDK_BACKEND=x11 gtk3-demo; echo gtk-rc=$?' > $RT/gtk.out 2>&1 &
pid=$!
waitwin '"app_id": "gtk:Gtk3-demo"' $RT/gtk.out && echo gtk-mapped=yes
swaymsg '[app_id="gtk:Gtk3-demo"] kill' > /dev/null
wait $pid; grep gtk-rc= $RT/gtk.out
# Clipboard, allowed: an X app's copy pasted on the host, the host's copy
# pasted by an X app (each once it has the focus).
$V --tag xcp -- {xc} --title copier --copy x11-to-host --seconds 600 > $RT/cp.out 2>&1 &
pid=$!
waitwin '"name": "\[xcp\] copier"' $RT/cp.out
for i in $(seq 300); do grep -q copied $RT/cp.out && break; sleep 0.2; done
sleep 2; echo host-pasted=$(timeout 60 wl-paste -n)
swaymsg '[title="copier$"] kill' > /dev/null; wait $pid
wl-copy host-to-x11
$V --tag xps -- {xc} --title paster --paste --seconds 120 > $RT/ps.out 2>&1
grep pasted $RT/ps.out | sed 's/^/x-/'
# Without the focus, no paste: a host window (wl-color, on sway directly)
# keeps the focus, which sway does not give the new X window (`no_focus`
# holds when the workspace has another window); the host's selection never
# reaches the VM.
swaymsg 'no_focus [title="nofocus"]' > /dev/null
{c} --title holder --seconds 600 > /dev/null 2>&1 &
holder=$!
waitwin '"name": "holder"' /dev/null
$V --tag xnf -- {xc} --title nofocus --paste-unfocused --seconds 90 > $RT/nf.out 2>&1
kill $holder
grep -E 'pasted|focused' $RT/nf.out | sed 's/^/nofocus-/'
# Clipboard denied: nothing either way.
$V --tag xd --clipboard deny -- sh -c '{xc} --title denied --paste --seconds 60; {xc} --title denied2 --copy x11-denied --seconds 60' > $RT/deny-x.out 2>&1 &
pid=$!
waitwin '"name": "\[xd\] denied2"' $RT/deny-x.out
sleep 5; echo denied-host-paste=$(timeout 30 wl-paste -n)
swaymsg '[title="denied2$"] kill' > /dev/null; wait $pid
grep pasted $RT/deny-x.out | sed 's/^/denied-/'
cat $RT/x.out $RT/xt.out $RT/gtk.out $RT/cp.out $RT/ps.out $RT/nf.out $RT/deny-x.out | grep -v '^\[' | sed 's/^/x11: /'
kill $HOLDER $SWAYPID 2>/dev/null; true
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "x-mapped="), "yes", "{all}");
    assert_eq!(
        value(&out, "x-appid="),
        "\"app_id\": \"xapp:x-color\"",
        "{all}"
    );
    assert_eq!(value(&out, "x-centre="), "00ffff", "{all}");
    assert_eq!(value(&out, "x-menu="), "ff00ff", "{all}");
    assert_eq!(value(&out, "x-fullscreen="), "1", "{all}");
    assert_eq!(value(&out, "x-state-fullscreen="), "yes", "{all}");
    assert_eq!(value(&out, "x-deleted="), "yes", "{all}");
    assert_eq!(value(&out, "xc-rc="), "0", "{all}");
    assert_eq!(value(&out, "xterm-mapped="), "yes", "{all}");
    assert_eq!(value(&out, "xtyped="), "hello-x11", "{all}");
    assert_eq!(value(&out, "gtk-mapped="), "yes", "{all}");
    assert_eq!(value(&out, "gtk-rc="), "0", "{all}");
    assert_eq!(value(&out, "host-pasted="), "x11-to-host", "{all}");
    assert_eq!(value(&out, "x-pasted="), "host-to-x11", "{all}");
    assert!(out.contains("nofocus-pasted-none"), "{all}");
    assert!(!out.contains("nofocus-focused"), "{all}");
    assert!(out.contains("denied-pasted-none"), "{all}");
    assert_eq!(value(&out, "denied-host-paste="), "host-to-x11", "{all}");
    assert_eq!(value(&out, "wi-rc="), "0", "{all}");
    let globals = value(&out, "globals=");
    for g in [
        "wl_compositor",
        "wl_shm",
        "xdg_wm_base",
        "wl_seat",
        "wl_output",
    ] {
        assert!(globals.contains(&format!("{g},")), "{g} missing: {globals}");
    }
    for g in [
        "zwp_virtual_keyboard_manager_v1",
        "zwlr_screencopy_manager_v1",
        "zwlr_data_control_manager_v1",
        "zwlr_layer_shell_v1",
        "zwp_linux_dmabuf_v1",
        "zwlr_export_dmabuf_manager_v1",
    ] {
        assert!(!globals.contains(g), "{g} visible: {globals}");
    }
    assert_eq!(value(&out, "mapped="), "yes", "{all}");
    assert_eq!(
        value(&out, "appid="),
        "\"app_id\": \"paint:wl-color\"",
        "{all}"
    );
    assert_eq!(value(&out, "pixel-stay="), "0000ff", "{all}");
    assert_eq!(value(&out, "pixel-hello="), "00ff00", "{all}");
    assert_eq!(value(&out, "hello-rc="), "0", "{all}");
    assert_eq!(value(&out, "hello-gone="), "yes", "{all}");
    assert_eq!(value(&out, "stay-alive="), "yes", "{all}");
    assert_eq!(value(&out, "color-rc="), "0", "{all}");
    assert_eq!(value(&out, "foot-mapped="), "yes", "{all}");
    assert_eq!(value(&out, "typed="), "hello-from-host", "{all}");
    // Refused because the protocol is not offered, not because the tool is
    // missing (126/127) or failed some other way.
    for tool in ["wtype", "grim"] {
        let rc = value(&out, &format!("{tool}-rc="));
        assert!(!["0", "126", "127"].contains(&rc), "{tool}: {rc}: {all}");
    }
    let said = value(&out, "deny-said=").to_lowercase();
    assert!(
        said.contains("virtual keyboard") && said.contains("screencopy"),
        "the tools should say the compositor lacks their protocol: {all}"
    );
}

#[test]
fn clipboard_both_ways_deny_a_stuck_reader_and_a_compositor_that_goes() {
    let (prelude, c, _) = sway_and_launcher();
    let script = format!(
        r#"{prelude}
big() {{ head -c 800000 /dev/urandom | base64 -w0 | head -c 1048576; }}

# Host -> guest: text, then 1 MiB.
wl-copy "from-the-host" 
$V -- sh -c 'echo small=$(wl-paste -n)' > $RT/p1 2>&1; grep -o 'small=.*' $RT/p1
big > $RT/big; echo hostsha=$(sha256sum < $RT/big | cut -c1-64)
wl-copy < $RT/big
$V -- sh -c 'wl-paste -n > /tmp/p; echo guestsha=$(sha256sum < /tmp/p | cut -c1-64)' > $RT/p2 2>&1; grep -o 'guestsha=.*' $RT/p2

# Guest -> host: 1 MiB copied in the guest (wl-copy's tiny window takes
# focus, sets the selection and goes), pasted on the host while the VM runs.
# Its own MIME type tells the host when the guest's selection is there.
M=application/x-vmapp-test
$V --tag gcopy -- sh -c 'head -c 800000 /dev/urandom | base64 -w0 | head -c 1048576 > /tmp/g; echo gcopysha=$(sha256sum < /tmp/g | cut -c1-64); wl-copy -t '$M' < /tmp/g; sleep 600' > $RT/gc.out 2>&1 &
pid=$!
i=0; until wl-paste -l 2>/dev/null | grep -q $M; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.2; done
timeout 60 wl-paste -n -t $M > $RT/gp; echo gpaste-rc=$?
echo hostgotsha=$(sha256sum < $RT/gp | cut -c1-64)
kill $pid; wait $pid
grep -o 'gcopysha=.*' $RT/gc.out

# clipboard = deny: the guest sees no clipboard at all.
wl-copy "s3cret-clip"
$V --clipboard deny -- sh -c 'wl-paste -n; echo deny-rc=$?' > $RT/d.out 2>&1; grep deny-rc= $RT/d.out
echo deny-leak=$(grep -c s3cret $RT/d.out)

# A paste target that never reads (256 KiB: four times a pipe's buffer):
# the relay and the proxy keep serving the app's other windows.
head -c 262144 $RT/big | wl-copy
$V --tag stuck -- sh -c '(wl-paste -n | sleep 60) & sleep 5; {c} --title after-stuck --seconds 3; echo after-stuck-rc=$?' > $RT/s.out 2>&1 &
pid=$!
waitwin '\[stuck\] after-stuck' $RT/s.out && echo stuck-mapped=yes
wait $pid; grep after-stuck-rc= $RT/s.out

# The compositor goes away: the guest's client ends, the VM does not.
$V --tag late -- sh -c '{c} --title late --seconds 120; echo client-rc=$?' > $RT/late.out 2>&1 &
pid=$!
waitwin '\[late\] late' $RT/late.out && echo late-mapped=yes
kill $HOLDER $SWAYPID 2>/dev/null; true
wait $pid; echo vm-rc=$?
grep client-rc= $RT/late.out
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "small="), "from-the-host", "{all}");
    let host = value(&out, "hostsha=");
    assert_eq!(value(&out, "guestsha="), host, "1 MiB host -> guest: {all}");
    assert_eq!(value(&out, "gpaste-rc="), "0", "{all}");
    let copied = value(&out, "gcopysha=");
    assert_eq!(copied.len(), 64, "{all}");
    assert_eq!(
        value(&out, "hostgotsha="),
        copied,
        "1 MiB guest -> host: {all}"
    );
    assert_ne!(value(&out, "deny-rc="), "0", "{all}");
    assert_eq!(value(&out, "deny-leak="), "0", "{all}");
    assert_eq!(value(&out, "stuck-mapped="), "yes", "{all}");
    assert_eq!(value(&out, "after-stuck-rc="), "0", "{all}");
    assert_eq!(value(&out, "late-mapped="), "yes", "{all}");
    assert_eq!(
        value(&out, "client-rc="),
        "1",
        "the client saw the compositor go: {all}"
    );
    // vmapp ends with the guest command's status (the `echo`'s), not with a
    // VM error: the VM outlived the compositor.
    assert_eq!(value(&out, "vm-rc="), "0", "{all}");
}
