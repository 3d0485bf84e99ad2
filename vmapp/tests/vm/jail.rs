//! vmapp's jail, looked at from outside while a VM runs: the process that
//! runs it has namespaces of its own, a root with only the VM's files (no
//! compositor socket, no host file outside its set), no_new_privs; a stop
//! signal to vmapp stops it gracefully (the app gets SIGTERM, then SIGKILL
//! after the grace period), a second one at once; `--jail=off` runs without; a user who is not
//! root runs a jailed VM.

use crate::common::{in_kvm, value, T, VMAPP};

#[test]
fn the_vm_runs_jailed_and_cannot_reach_the_compositor() {
    let script = format!(
        r#"
RT=$(mktemp -d /tmp/vmapp-jail.XXXXXX); export XDG_RUNTIME_DIR=$RT
wait_for() {{ i=0; while ! grep -q "$1" "$2" 2>/dev/null; do i=$((i+1)); [ $i -gt 1200 ] && return 1; sleep 0.2; done; }}
# A stand-in for the user's compositor: only the VM's wl-proxy may reach it.
socat UNIX-LISTEN:$RT/wayland-host,fork /dev/null & sock=$!
while [ ! -S $RT/wayland-host ]; do sleep 0.1; done
echo host-secret > /tmp/vmapp-jail-secret.$$
K=$({VMAPP} prepare | sed -n 's/^vmlinux=//p')
echo allowed-top=dev proc $(echo $K | cut -d/ -f2) $(echo $RT | cut -d/ -f2)
RUST_LOG=vmapp::jail=info timeout {T} {VMAPP} launch --memory 256 --wayland=$RT/wayland-host -- sh -c 'echo up; sleep 10; echo done' > $RT/out 2>&1 &
t=$!
wait_for up $RT/out || echo "never up: $(cat $RT/out)"
parent=$(pgrep -P $t -x vmapp)
child=$(pgrep -P $parent -x vmapp)
echo have-child=$([ -n "$child" ] && echo yes)
# The parent outside keeps the host's root (the child's pivot_root is its own),
# under a seccomp filter of its own.
echo parent-root=$(ls /proc/$parent/root/ | grep -c "^etc$")
echo parent-seccomp=$(awk '/^Seccomp:/{{print $2}}' /proc/$parent/status)
R=/proc/$child/root
echo top=$(ls -A $R | sort | tr '\n' ' ')
[ -e $R$RT/wayland-host ] && echo visible=compositor
[ -e $R/tmp/vmapp-jail-secret.$$ ] && echo visible=secret
[ -e $R/etc/passwd ] && echo visible=etc
[ -e $R/usr/bin ] && echo visible=usr
echo proxy-socket=$(ls $R$RT/vmapp-*/wayland-0 >/dev/null 2>&1 && echo reachable)
echo kvm=$([ -c $R/dev/kvm ] && echo yes)
echo nnp=$(awk '/^NoNewPrivs/{{print $2}}' /proc/$child/status)
echo pid-in-ns=$(awk '/^NSpid/{{print $3}}' /proc/$child/status)
for ns in user mnt pid ipc net; do
  [ "$(readlink /proc/$child/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ] && echo ns-$ns=own
done
wait $t; echo rc=$?
echo out=$(grep -cx up $RT/out) $(grep -cx done $RT/out)
echo landlock=$(grep -o "Landlock ABI [0-9]*\|no Landlock" $RT/out)

# Run as root with --host-root, the jailed side binds /etc for the guest's
# view, which hides /etc/shadow: the jail hides it from itself too.
timeout {T} {VMAPP} launch --memory 256 --host-root -- sh -c 'echo up; sleep 8' > $RT/out6 2>&1 &
t=$!
wait_for up $RT/out6 || echo "host-root never up: $(cat $RT/out6)"
parent=$(pgrep -P $t -x vmapp); child=$(pgrep -P $parent -x vmapp)
echo host-shadow=$([ -s /etc/shadow ] && echo some)
echo shadow-bytes=$(wc -c < /proc/$child/root/etc/shadow)
echo passwd=$([ -s /proc/$child/root/etc/passwd ] && echo some)
wait $t; echo hr-rc=$?

# A stop signal presses the VM's power button: the app gets SIGTERM (its
# trap runs) and vmapp exits with the app's status.
timeout {T} {VMAPP} launch --memory 256 -- sh -c 'trap "echo got-term; exit 42" TERM; echo up; sleep 200 & wait' > $RT/out2 2>&1 &
t=$!
wait_for up $RT/out2
parent=$(pgrep -P $t -x vmapp)
kill -TERM $parent; wait $t; echo term-rc=$?
echo term-out=$(grep -c got-term $RT/out2)
sleep 1; echo left=$(pgrep -x vmapp | wc -l)
# An app that ignores SIGTERM is killed after the guest's grace period...
timeout {T} {VMAPP} launch --memory 256 -- sh -c 'trap "" TERM; echo up; sleep 200' > $RT/out4 2>&1 &
t=$!
wait_for up $RT/out4
parent=$(pgrep -P $t -x vmapp)
s=$(date +%s); kill -TERM $parent; wait $t; echo ignore-rc=$?; echo ignore-secs=$(( $(date +%s) - s ))
# ... unless a second signal stops the VM at once.
timeout {T} {VMAPP} launch --memory 256 -- sh -c 'trap "" TERM; echo up; sleep 200' > $RT/out5 2>&1 &
t=$!
wait_for up $RT/out5
parent=$(pgrep -P $t -x vmapp)
s=$(date +%s); kill -TERM $parent; sleep 1; kill -INT $parent; wait $t; echo twice-rc=$?; echo twice-secs=$(( $(date +%s) - s ))

# --jail=off: one process, the caller's namespaces; a stop signal works the
# same.
timeout {T} {VMAPP} launch --memory 256 --jail=off -- sh -c 'trap "exit 42" TERM; echo up; sleep 200 & wait' > $RT/out3 2>&1 &
t=$!
wait_for up $RT/out3
parent=$(pgrep -P $t -x vmapp)
echo off-children=$(pgrep -P $parent -x vmapp | wc -l)
echo off-ns=$([ "$(readlink /proc/$parent/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ] && echo same)
kill -TERM $parent; wait $t; echo off-rc=$?

# Not root: a user with access to /dev/kvm runs a jailed VM and its share,
# with the host's system trees (--host-root: the guest's sh is the host's,
# its files root's, which the guest kernel opens with O_NOATIME on exec).
chmod 0666 /dev/kvm
U=$(mktemp -d /tmp/vmapp-user.XXXXXX); mkdir $U/rt $U/share; chmod 0700 $U/rt; chown -R 65534:65534 $U
setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=$U XDG_RUNTIME_DIR=$U/rt \
  timeout {T} {VMAPP} launch --memory 256 --host-root --share $U/share:data -- sh -c 'echo from-guest > /mnt/data/f; ln /mnt/data/f /mnt/data/g && /bin/true && echo user-guest-ok' > $U/out 2>&1
echo user-rc=$?
echo user-out=$(grep -x user-guest-ok $U/out || cat $U/out)
echo user-file=$(stat -c %u $U/share/f):$(cat $U/share/f)
kill $sock; rm -rf $RT $U /tmp/vmapp-jail-secret.$$
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "have-child="), "yes", "{all}");
    assert_eq!(value(&out, "parent-root="), "1", "{all}");
    assert_eq!(value(&out, "parent-seccomp="), "2", "{all}");
    assert_eq!(value(&out, "host-shadow="), "some", "{all}");
    assert_eq!(value(&out, "shadow-bytes="), "0", "{all}");
    assert_eq!(value(&out, "passwd="), "some", "{all}");
    assert_eq!(value(&out, "hr-rc="), "0", "{all}");
    assert!(!out.contains("visible="), "{all}");
    // The root holds /dev, /proc and the way to the runtime directory and the
    // guest's kernel and initramfs: nothing of the host's system.
    let allowed: Vec<&str> = value(&out, "allowed-top=").split_whitespace().collect();
    let top = value(&out, "top=");
    assert!(top.contains("dev") && top.contains("proc"), "{all}");
    for t in top.split_whitespace() {
        assert!(allowed.contains(&t), "{t} in the jail's root: {all}");
    }
    assert_eq!(value(&out, "proxy-socket="), "reachable", "{all}");
    assert_eq!(value(&out, "kvm="), "yes", "{all}");
    assert_eq!(value(&out, "nnp="), "1", "{all}");
    assert_eq!(value(&out, "pid-in-ns="), "1", "{all}");
    for ns in ["user", "mnt", "pid", "ipc", "net"] {
        assert_eq!(value(&out, &format!("ns-{ns}=")), "own", "{all}");
    }
    assert_eq!(value(&out, "rc="), "0", "{all}");
    assert_eq!(
        value(&out, "out="),
        "1 1",
        "the command ran to its end: {all}"
    );
    assert_eq!(value(&out, "term-rc="), "42", "{all}");
    assert_eq!(value(&out, "term-out="), "1", "{all}");
    // SIGKILL after the guest's grace period of 10 s.
    assert_eq!(value(&out, "ignore-rc="), "137", "{all}");
    let ignore: u64 = value(&out, "ignore-secs=").parse().expect("seconds");
    assert!(ignore >= 9, "killed before the grace period ended: {all}");
    assert_eq!(value(&out, "twice-rc="), "130", "{all}");
    let twice: u64 = value(&out, "twice-secs=").parse().expect("seconds");
    assert!(twice < 9, "a second signal should not wait: {all}");
    assert_eq!(value(&out, "left="), "0", "{all}");
    assert_eq!(value(&out, "off-children="), "0", "{all}");
    assert_eq!(value(&out, "off-ns="), "same", "{all}");
    assert_eq!(value(&out, "off-rc="), "42", "{all}");
    // vmapp needs no root.
    assert_eq!(value(&out, "user-rc="), "0", "{all}");
    assert_eq!(value(&out, "user-out="), "user-guest-ok", "{all}");
    assert_eq!(value(&out, "user-file="), "65534:from-guest", "{all}");
}
