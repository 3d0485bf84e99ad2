//! virtio-fs end to end: the stock kernel's virtiofs driver against our
//! device, checked from both sides (guest and host directory).

use crate::common::{in_kvm, value, T, VMAPP};

#[test]
fn shared_directories_rw_ro_and_escapes() {
    let v = format!("timeout {T} {VMAPP} launch --memory 256");
    let script = format!(
        r#"
d=$(mktemp -d /tmp/vmapp-fs.XXXXXX)
wait_for() {{ i=0; while ! grep -q "$1" "$2" 2>/dev/null; do i=$((i+1)); [ $i -gt 1200 ] && return 1; sleep 0.2; done; }}
mkdir $d/rw $d/ro $d/ro/sub
echo HOSTSECRET > $d/secret
echo original > $d/ro/file
ln -s $d/secret $d/rw/abs-escape
ln -s ../secret $d/rw/rel-escape
ln -s /etc $d/rw/to-etc
head -c 67108864 /dev/urandom > $d/rw/big-from-host
echo hostbigsha=$(sha256sum < $d/rw/big-from-host | cut -d' ' -f1)

# 1. Every common operation from the guest, and a 64 MiB file each way (the
#    guest writes in 1 MiB blocks: each write is a FUSE request, and a VM exit
#    is slow under the emulated host).
echo t1=$(date +%s)
{v} --share $d/rw:data -- sh -c '
cd /mnt/data || exit 9
echo one > f && echo two >> f && echo append=$(cat f | tr "\n" +)
truncate -s 2 f && echo trunc=$(cat f)
mv f g && [ ! -e f ] && echo rename=$(cat g)
mkdir dir && rmdir dir && [ ! -e dir ] && echo mkdir-rmdir=ok
ln -s g sym && echo readlink=$(readlink sym) symcat=$(cat sym)
ln g hard && echo links=$(stat -c %h g)
chmod 640 g && echo mode=$(stat -c %a g)
touch -d "2001-02-03 04:05:06" g && echo mtime=$(stat -c %Y g)
echo guestbigsha=$(sha256sum < big-from-host | cut -d" " -f1)
dd if=/dev/urandom of=big-from-guest bs=1M count=64 2>/dev/null && sync
echo guestwrotesha=$(sha256sum < big-from-guest | cut -d" " -f1)
rm hard && [ ! -e hard ] && echo unlink=ok
cat abs-escape 2>/dev/null; echo abs-escape-rc=$?
cat rel-escape 2>/dev/null; echo rel-escape-rc=$?
echo etc-through-link=$(ls to-etc/ | grep -c "^os-release$")
ln /init hardout 2>/dev/null; echo hardlink-out-rc=$?
'
echo rc1=$?
echo hostwrotesha=$(sha256sum < $d/rw/big-from-guest | cut -d' ' -f1)
echo host-g=$(cat $d/rw/g) host-mode=$(stat -c %a $d/rw/g) host-sym=$(readlink $d/rw/sym)
echo host-owner=$(stat -c %u $d/rw/g) me=$(id -u)
echo secret=$(cat $d/secret)
rm -f $d/rw/big-*

echo t2=$(date +%s)
# 2. Host-side changes are visible in a running guest.
{VMAPP} launch --memory 256 --share $d/rw:data -- sh -c 'echo @@ready; while [ ! -e /mnt/data/later ]; do sleep 0.2; done; echo later=$(cat /mnt/data/later)' > $d/out2 2>&1 &
pid=$!
wait_for @@ready $d/out2 || echo "guest never ready: $(cat $d/out2)"
# Made whole, then renamed in: the guest's loop may see the name at once.
echo from-the-host > $d/rw/later.part && mv $d/rw/later.part $d/rw/later
wait $pid; echo rc2=$?
grep later= $d/out2

echo t3=$(date +%s)
# 3. A read-only share: the guest mounts it again without "ro", so every
#    refusal comes from the device, not from the guest kernel.
before=$(cd $d/ro && find . -exec stat -c '%n %a %s %Y' {{}} + | sort; cat file)
{v} --share $d/ro:rotag,ro -- sh -c '
echo mountopts=$(grep rotag /proc/mounts | cut -d" " -f4 | cut -d, -f1)
umount /mnt/rotag && mkdir -p /m && mount -t virtiofs rotag /m || exit 9
echo remount=$(grep rotag /proc/mounts | cut -d" " -f4 | cut -d, -f1)
cd /m
echo read=$(cat file)
t() {{ out=$("$@" 2>&1); echo "$1 $?: $out"; }}
t touch new
t sh -c "echo x > file"
t sh -c "echo x >> file"
t mkdir newdir
t rmdir sub
t rm file
t mv file moved
t ln file hard
t ln -s file sym
t chmod 777 file
t truncate -s 0 file
t touch -d "2001-02-03" file
t mknod fifo p
'
echo rc3=$?
after=$(cd $d/ro && find . -exec stat -c '%n %a %s %Y' {{}} + | sort; cat file)
[ "$before" = "$after" ] && echo ro-unchanged=yes
echo t4=$(date +%s)

# 4. Not our guest's mounts: a user's own kernel and initramfs (here the same
#    files, booted as "other"), mounting the share by its tag.
k=$({VMAPP} prepare | sed -n 's/^vmlinux=//p')
i=$({VMAPP} prepare | sed -n 's/^initramfs=//p')
{v} --kernel $k --initramfs $i --cmdline "quiet loglevel=0" --share $d/rw:usertag -- sh -c 'mkdir -p /x && mount -t virtiofs usertag /x && echo usermount=$(cat /x/later)'
echo rc4=$?
echo t5=$(date +%s)
rm -rf $d
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "rc1="), "0", "{all}");
    assert_eq!(value(&out, "append="), "one+two+", "{all}");
    assert_eq!(value(&out, "trunc="), "on", "{all}");
    assert_eq!(value(&out, "rename="), "on", "{all}");
    assert_eq!(value(&out, "mkdir-rmdir="), "ok", "{all}");
    assert_eq!(value(&out, "readlink="), "g symcat=on", "{all}");
    assert_eq!(value(&out, "links="), "2", "{all}");
    assert_eq!(value(&out, "mode="), "640", "{all}");
    assert_eq!(value(&out, "mtime="), "981173106", "{all}");
    assert_eq!(value(&out, "unlink="), "ok", "{all}");
    let hostbig = value(&out, "hostbigsha=");
    assert_eq!(hostbig.len(), 64, "{all}");
    assert_eq!(value(&out, "guestbigsha="), hostbig, "{all}");
    let guestbig = value(&out, "guestwrotesha=");
    assert_eq!(guestbig.len(), 64, "{all}");
    assert_ne!(guestbig, hostbig, "{all}");
    assert_eq!(value(&out, "hostwrotesha="), guestbig, "{all}");
    assert_eq!(
        value(&out, "host-g="),
        "on host-mode=640 host-sym=g",
        "{all}"
    );
    let (owner, me) = value(&out, "host-owner=").split_once(" me=").unwrap();
    assert_eq!(
        owner, me,
        "files the guest makes belong to the user running vmapp: {all}"
    );
    // Escapes: the host never follows a link out, the guest sees no host file.
    assert_ne!(value(&out, "abs-escape-rc="), "0", "{all}");
    assert_ne!(value(&out, "rel-escape-rc="), "0", "{all}");
    assert_ne!(value(&out, "hardlink-out-rc="), "0", "{all}");
    assert_eq!(
        out.matches("HOSTSECRET").count(),
        1,
        "only the host's own cat: {all}"
    );
    assert_eq!(value(&out, "secret="), "HOSTSECRET", "{all}");
    // Host-side changes.
    assert_eq!(value(&out, "rc2="), "0", "{all}");
    assert_eq!(value(&out, "later="), "from-the-host", "{all}");
    // Read-only.
    assert_eq!(value(&out, "rc3="), "0", "{all}");
    assert_eq!(value(&out, "mountopts="), "ro", "{all}");
    assert_eq!(value(&out, "remount="), "rw", "{all}");
    assert_eq!(value(&out, "read="), "original", "{all}");
    for op in [
        "touch", "sh", "mkdir", "rmdir", "rm", "mv", "ln", "chmod", "truncate", "mknod",
    ] {
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(&format!("{op} ")))
            .collect();
        assert!(!lines.is_empty(), "{op}: {all}");
        for l in lines {
            assert!(!l.starts_with(&format!("{op} 0:")), "{l}: {all}");
            assert!(l.contains("Read-only file system"), "{l}: {all}");
        }
    }
    assert_eq!(value(&out, "ro-unchanged="), "yes", "{all}");
    assert_eq!(
        value(&out, "etc-through-link="),
        "0",
        "the guest's /etc, not the host's: {all}"
    );
    assert_eq!(value(&out, "rc4="), "0", "{all}");
    assert_eq!(value(&out, "usermount="), "from-the-host", "{all}");
}

#[test]
fn host_root_runs_host_programs_in_the_guest_and_an_app_keeps_its_home() {
    let v = format!("timeout {T} {VMAPP} launch --memory 512");
    let script = format!(
        r#"
d=$(mktemp -d /tmp/vmapp-hostroot.XXXXXX)
echo host-tmp-file > /tmp/vmapp-hostroot-marker.$$
mkdir $d/home
{v} --host-root -- python3 -c 'print(1)'
echo rc1=$?
# The distribution's python3 (the package .ci/run installs; PATH may put
# another first, in a home the guest does not see), resolved here, as the
# guest reads it through the share.
PY=$(readlink -f /usr/bin/python3)
{v} --host-root --env PY=$PY -- sh -c '
echo sockversion=$(socat -V | grep -c "socat version")
echo pysha=$(sha256sum $PY | cut -d" " -f1)
ls /tmp/vmapp-hostroot-marker.* 2>/dev/null; echo hosttmp-rc=$?
echo x > /usr/vmapp-write-test 2>/dev/null; echo usr-write-rc=$?
echo home=$HOME pwd=$(pwd)
echo private > $HOME/made-in-guest && echo homewrite=ok
ls /proc/1/exe >/dev/null && echo guestproc=$(cat /proc/1/comm)
foot --version >/dev/null && echo foot=runs
'
echo rc2=$?
echo hostpysha=$(sha256sum $PY | cut -d' ' -f1)
{v} --host-root --home $d/home -- sh -c 'echo persisted > $HOME/kept; echo guesthome=$(pwd)'
echo rc3=$?
echo kept=$(cat $d/home/kept)
[ -e "$HOME/made-in-guest" ] && echo leaked-home=yes

# An app profile in host-root mode keeps its $HOME between runs; options
# given to `launch NAME` override the profile's, a command replaces its own.
export XDG_CONFIG_HOME=$d/cfg XDG_DATA_HOME=$d/data XDG_RUNTIME_DIR=$d/rt
mkdir -m 700 $d/rt
{VMAPP} create notes --host-root --memory 300 -- sh -c 'cat $HOME/n 2>/dev/null || echo none; echo kept >> $HOME/n'
echo create-rc=$?
timeout {T} {VMAPP} launch notes > $d/p1 2>/dev/null; echo p1-rc=$? p1=$(cat $d/p1)
echo data-mode=$(stat -c %a $d/data/vmapp/notes/home)
# Two apps at once. One VM per app: a second launch runs its command in the
# running VM (same boot), `exec` too; `stop` ends one gracefully (its
# command's SIGTERM trap writes to its home), the other goes on.
h=$d/data/vmapp/notes/home
timeout 900 {VMAPP} launch notes -- sh -c 'cat /proc/sys/kernel/random/boot_id > $HOME/boot
trap "echo term > $HOME/got-term; exit 0" TERM; while :; do sleep 1; done' > /dev/null 2>&1 &
t=$!
{VMAPP} create other --memory 200 -- sleep 600
timeout 900 {VMAPP} launch other > /dev/null 2>&1 &
o=$!
i=0; while [ ! -s $h/boot ] && [ $i -lt 1200 ]; do sleep 0.2; i=$((i+1)); done
timeout 200 {VMAPP} launch notes -- sh -c 'cat /proc/sys/kernel/random/boot_id; exit 7' > $d/second
echo second-rc=$? same-boot=$([ -s $d/second ] && [ "$(cat $d/second)" = "$(cat $h/boot)" ] && echo yes)
echo hello | timeout 200 {VMAPP} exec notes --env X=1 -- sh -c 'read x; echo got=$x$X; echo err >&2; exit 3' 2> $d/exec-err
echo exec-rc=$? exec-err=$(cat $d/exec-err)
timeout 200 {VMAPP} exec other -- true; echo other-exec-rc=$?
{VMAPP} list > $d/list; cat $d/list
echo listed=$(grep -cE '^(notes|other) +running +[0-9]+ ' $d/list)
timeout 200 {VMAPP} stop notes; echo stop-rc=$?
wait $t; echo notes-rc=$? got-term=$(cat $h/got-term 2>&1)
timeout 200 {VMAPP} exec other -- echo still-running; echo other-rc=$?
echo stopped-listed=$({VMAPP} list | grep -cE '^notes +stopped')
{VMAPP} exec notes -- true 2> $d/not-running; echo not-running=$(grep -c "not running" $d/not-running)
timeout 200 {VMAPP} stop other --force; echo stop-other-rc=$?
wait $o; echo o-rc=$?
{VMAPP} destroy other --yes
# A vmapp killed with SIGKILL leaves nothing that blocks the next launch.
timeout {T} {VMAPP} launch notes -- sleep 300 > /dev/null 2>&1 &
t=$!
i=0; while [ ! -S $d/rt/vmapp/notes/control ] && [ $i -lt 1200 ]; do sleep 0.2; i=$((i+1)); done
kill -KILL $(pgrep -P $t -x vmapp); wait $t
i=0; while pgrep -x vmapp > /dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo stale=$(ls $d/rt/vmapp/notes | wc -l)
timeout {T} {VMAPP} launch notes --memory 256 -- sh -c 'echo $(grep MemTotal /proc/meminfo | tr -s " " | cut -d" " -f2) $(cat $HOME/n)' > $d/p2 2>/dev/null
echo p2-rc=$? p2=$(cat $d/p2)
echo after-kill-left=$(ls $d/rt/vmapp 2>/dev/null | wc -l)
{VMAPP} desktop notes > /dev/null; echo desktop-name=$(grep '^Name=' $d/data/applications/vmapp-notes.desktop)
echo desktop-exec=$(grep -c '^Exec=.* launch notes$' $d/data/applications/vmapp-notes.desktop)
{VMAPP} desktop notes --remove > /dev/null; echo desktop-gone=$([ ! -e $d/data/applications/vmapp-notes.desktop ] && echo yes)
{VMAPP} destroy notes --data --yes; echo destroy-rc=$?
echo destroyed=$([ ! -e $d/data/vmapp/notes ] && [ ! -e $d/cfg/vmapp/apps/notes.toml ] && echo yes)
rm -rf $d /tmp/vmapp-hostroot-marker.$$
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "rc1="), "0", "{all}");
    assert!(out.lines().any(|l| l == "1"), "python3 printed 1: {all}");
    assert_eq!(value(&out, "rc2="), "0", "{all}");
    assert_eq!(value(&out, "sockversion="), "1", "{all}");
    // The host's python3 as the guest reads it through the share (a hash
    // of something: an empty one would match a missing file on both sides).
    assert_eq!(value(&out, "hostpysha=").len(), 64, "{all}");
    assert_eq!(value(&out, "pysha="), value(&out, "hostpysha="), "{all}");
    assert_ne!(
        value(&out, "hosttmp-rc="),
        "0",
        "the host's /tmp is private: {all}"
    );
    assert_ne!(value(&out, "usr-write-rc="), "0", "{all}");
    assert_eq!(value(&out, "homewrite="), "ok", "{all}");
    assert_eq!(value(&out, "guestproc="), "init", "{all}");
    assert_eq!(value(&out, "foot="), "runs", "{all}");
    let home = value(&out, "home=");
    let (h, pwd) = home.split_once(" pwd=").unwrap();
    assert_eq!(h, pwd, "the command starts in $HOME: {all}");
    assert!(!out.contains("leaked-home=yes"), "{all}");
    assert_eq!(value(&out, "rc3="), "0", "{all}");
    assert_eq!(value(&out, "kept="), "persisted", "{all}");
    assert_eq!(value(&out, "create-rc="), "0", "{all}");
    assert_eq!(value(&out, "p1-rc="), "0 p1=none", "{all}");
    // The second run: after a SIGKILLed one, with --memory 256 and a command
    // of its own, and the home the first run wrote.
    let p2 = value(&out, "p2-rc=");
    let (kib, home) = p2
        .strip_prefix("0 p2=")
        .and_then(|r| r.split_once(' '))
        .unwrap_or_else(|| panic!("{all}"));
    let kib: u64 = kib.parse().unwrap();
    assert!(
        kib <= 256 * 1024 && kib > 200 * 1024,
        "--memory 256 won: {all}"
    );
    assert_eq!(home, "kept", "the first run's home: {all}");
    assert_eq!(value(&out, "data-mode="), "700", "{all}");
    assert_eq!(value(&out, "second-rc="), "7 same-boot=yes", "{all}");
    assert_eq!(value(&out, "got="), "hello1", "stdin and --env: {all}");
    assert_eq!(value(&out, "exec-rc="), "3 exec-err=err", "{all}");
    assert_eq!(value(&out, "other-exec-rc="), "0", "{all}");
    assert_eq!(value(&out, "listed="), "2", "{all}");
    assert_eq!(value(&out, "stop-rc="), "0", "{all}");
    assert_eq!(
        value(&out, "notes-rc="),
        "0 got-term=term",
        "the graceful path: {all}"
    );
    assert!(out.lines().any(|l| l == "still-running"), "{all}");
    assert_eq!(value(&out, "other-rc="), "0", "{all}");
    assert_eq!(value(&out, "stopped-listed="), "1", "{all}");
    assert_eq!(value(&out, "not-running="), "1", "{all}");
    assert_eq!(value(&out, "stop-other-rc="), "0", "{all}");
    assert_eq!(value(&out, "o-rc="), "143", "a hard stop: {all}");
    let stale: u32 = value(&out, "stale=").parse().unwrap();
    assert!(stale >= 1, "the killed vmapp left its directory: {all}");
    assert_eq!(
        value(&out, "after-kill-left="),
        "0",
        "removed at the end: {all}"
    );
    assert_eq!(
        value(&out, "desktop-name="),
        "Name=notes (in a VM)",
        "{all}"
    );
    assert_eq!(value(&out, "desktop-exec="), "1", "{all}");
    assert_eq!(value(&out, "desktop-gone="), "yes", "{all}");
    assert_eq!(value(&out, "destroy-rc="), "0", "{all}");
    assert_eq!(value(&out, "destroyed="), "yes", "{all}");
}

/// What a host-root guest must not see, looked for from inside (through its
/// root and through a second mount of the same share) and from a home under
/// /var and under /home.
const ALLOWLIST_PROBE: &str = r#"
r=/mnt/again; mkdir -p $r; mount -t virtiofs vmapp-root $r && echo remount=ok
echo top=$(ls $r | tr "\n" " ")
for p in $S/secret $D/notes.txt /etc/shadow /etc/gshadow /root/vmapp-root-secret /home/vmapp-allow/notes.txt; do
  test -e $p && echo visible=$p; test -e $r$p && echo visible-again=$p
done
cat /opt/vmapp-link 2>/dev/null && echo visible=through-link
cat $r/usr/../srv/$(basename $S)/secret 2>/dev/null && echo visible=dotdot
(cd /usr/../srv 2>/dev/null && echo visible=cd-dotdot)
echo shadow-listed=$(ls /etc $r/etc | grep -c "^shadow$")
echo passwd=$(grep -c "^root:" /etc/passwd)
[ "$(cat /etc/machine-id)" != "$HOSTID" ] && [ -n "$(cat /etc/machine-id)" ] && echo machine-id=own
echo home=$HOME pwd=$(pwd)
echo w > $HOME/new && touch /tmp/a /run/a /var/tmp/a /mnt/a && echo own-dirs=writable
cat $HOME/notes.txt 2>/dev/null; echo home-notes-rc=$?
echo font=$(cat $HOME/.local/share/fonts/f.txt 2>&1)
echo x > /etc/vmapp-write-test 2>/dev/null; echo etc-write-rc=$?
echo py=$(python3 -c "print(6*7)")
"#;

#[test]
fn host_root_shows_the_guest_only_the_allowlist() {
    let v = format!("timeout {T} {VMAPP} launch --memory 512 --host-root");
    // The host's private places are made in a mount namespace of the test's
    // own (tmpfs over /srv, /opt, /var/tmp, /home and /root), so the test
    // writes nothing outside it, here or on a developer's machine.
    let script = format!(
        r#"
cat > /tmp/vmapp-allow-$$.sh <<'INNER'
export XDG_CACHE_HOME=${{XDG_CACHE_HOME:-$HOME/.cache}}
for m in /srv /opt /var/tmp /home /root; do mount -t tmpfs tmpfs $m || echo cannot-mount=$m; done
D=$(mktemp -d /var/tmp/vmapp-allow.XXXXXX)
S=/srv/vmapp-allow
mkdir -p $S $D/home/.local/share/fonts $D/exposed $D/exposed-ro /home/vmapp-allow
echo srv-secret > $S/secret
echo other > $D/notes.txt
echo private > $D/home/notes.txt
echo private > /home/vmapp-allow/notes.txt
echo font > $D/home/.local/share/fonts/f.txt
echo ro > $D/exposed-ro/file
echo root-secret > /root/vmapp-root-secret
ln -s $S/secret /opt/vmapp-link
HOSTID=$(cat /etc/machine-id 2>/dev/null)
probe='{ALLOWLIST_PROBE}'
env="--env S=$S --env D=$D --env HOSTID=$HOSTID"
echo ===var
HOME=$D/home {v} $env --expose $D/exposed-ro --expose $D/exposed,rw -- sh -c "$probe
cat $D/exposed-ro/file > /dev/null && echo exposed-ro=readable
echo x > $D/exposed-ro/new 2>/dev/null; echo exposed-ro-write-rc=\$?
echo from-guest > $D/exposed/made && echo exposed-rw=written"
echo rc-var=$?
echo ===home
HOME=/home/vmapp-allow {v} $env -- sh -c "$probe"
echo rc-home=$?
echo ===end
echo made=$(cat $D/exposed/made)
echo ro-files=$(ls $D/exposed-ro)
INNER
if [ "$(id -u)" = 0 ]; then unshare -m sh /tmp/vmapp-allow-$$.sh; else unshare -rm sh /tmp/vmapp-allow-$$.sh; fi
rm -f /tmp/vmapp-allow-$$.sh
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    let var = out
        .split("===var")
        .nth(1)
        .unwrap()
        .split("===home")
        .next()
        .unwrap();
    let home = out
        .split("===home")
        .nth(1)
        .unwrap()
        .split("===end")
        .next()
        .unwrap();
    for (name, run, rc) in [("var", var, "rc-var="), ("home", home, "rc-home=")] {
        assert_eq!(value(run, rc), "0", "{name}: {all}");
        assert_eq!(value(run, "remount="), "ok", "{name}: {all}");
        let top = value(run, "top=");
        for t in top.split_whitespace() {
            assert!(
                [
                    "bin", "etc", "home", "lib", "lib32", "lib64", "libx32", "nix", "opt", "root",
                    "sbin", "usr", "var"
                ]
                .contains(&t),
                "{name}: {t} is not on the allowlist: {all}"
            );
        }
        assert!(top.contains("usr") && top.contains("etc"), "{name}: {all}");
        assert!(!run.contains("visible"), "{name}: {all}");
        assert_eq!(value(run, "shadow-listed="), "0", "{name}: {all}");
        assert_eq!(value(run, "passwd="), "1", "{name}: {all}");
        assert_eq!(value(run, "machine-id="), "own", "{name}: {all}");
        assert_eq!(value(run, "own-dirs="), "writable", "{name}: {all}");
        assert_ne!(
            value(run, "home-notes-rc="),
            "0",
            "{name}: a private home: {all}"
        );
        assert_ne!(value(run, "etc-write-rc="), "0", "{name}: {all}");
        assert_eq!(value(run, "py="), "42", "{name}: {all}");
        let h = value(run, "home=");
        let (h, pwd) = h.split_once(" pwd=").unwrap();
        assert_eq!(h, pwd, "{name}: {all}");
    }
    assert!(
        value(var, "home=").starts_with("/var/tmp/vmapp-allow."),
        "{all}"
    );
    assert!(
        value(home, "home=").starts_with("/home/vmapp-allow"),
        "{all}"
    );
    // The user's fonts under $HOME stay visible over the private home.
    assert_eq!(value(var, "font="), "font", "{all}");
    assert_eq!(value(var, "exposed-ro="), "readable", "{all}");
    assert_ne!(value(var, "exposed-ro-write-rc="), "0", "{all}");
    assert_eq!(value(var, "exposed-rw="), "written", "{all}");
    assert_eq!(value(&out, "made="), "from-guest", "{all}");
    assert_eq!(value(&out, "ro-files="), "file", "{all}");
    assert!(!out.contains("cannot-mount"), "{all}");
}
