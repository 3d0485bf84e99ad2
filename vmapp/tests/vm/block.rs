//! virtio-blk end to end: the stock kernel's virtio_blk driver against our
//! device, checked from both sides (guest and host file). Two tests, each one
//! emulated-host run, so that the two run side by side.

use crate::common::{in_kvm, value, T, VMAPP};

/// 2 MiB, the size of the pattern the guest writes.
const PATTERN: u32 = 2 << 20;

/// Each test's scratch directory, its 64 MiB image `$img`, and `wait_for
/// TEXT FILE` (gives up after about four minutes).
const DISK: &str = r#"d=$(mktemp -d /tmp/vmapp-blk.XXXXXX)
img=$d/disk.img
truncate -s 64M $img
wait_for() { i=0; while ! grep -q "$1" "$2"; do i=$((i+1)); [ $i -gt 1200 ] && return 1; sleep 0.2; done; }
"#;

#[test]
fn disk_data_survives_restarts_kills_and_read_only() {
    let v = format!("timeout {T} {VMAPP} launch --memory 256");
    // Background VMs are killed by pid, so they run without `timeout`.
    let bg = format!("{VMAPP} launch --memory 256");
    let script = format!(
        r#"
{DISK}
echo t1=$(date +%s)
# 1. The guest writes a random pattern, flushes, reports its hash.
{v} --disk $img -- sh -c 'dd if=/dev/urandom of=/dev/vda bs=64K count=32 conv=fsync 2>/dev/null && echo guestsha=$(head -c {PATTERN} /dev/vda | sha256sum | cut -d" " -f1)'
echo rc1=$?
echo hostsha=$(head -c {PATTERN} $img | sha256sum | cut -d" " -f1)

echo t2=$(date +%s)
# 2. A new VM reads the same bytes.
{v} --disk $img,serial=data-disk -- sh -c 'echo rereadsha=$(head -c {PATTERN} /dev/vda | sha256sum | cut -d" " -f1); echo serial=$(cat /sys/block/vda/serial); echo size=$(cat /sys/block/vda/size)'
echo rc2=$?

echo t3=$(date +%s)
# 3. After a guest sync, kill -9 of vmapp loses nothing.
{bg} --disk $img -- sh -c 'printf killtest-data | dd of=/dev/vda bs=512 seek=20000 conv=sync 2>/dev/null; sync; echo @@synced; sleep 600' > $d/out3 2>&1 &
pid=$!
wait_for @@synced $d/out3 || echo "never synced: $(cat $d/out3)"
kill -9 $pid; wait $pid
echo killed=$(dd if=$img bs=512 skip=20000 count=1 2>/dev/null | head -c 13)

echo t4=$(date +%s)
# 4. A read-only disk refuses writes; the file is unchanged.
before=$(sha256sum < $img)
{v} --disk $img,ro -- sh -c 'echo ro=$(cat /sys/block/vda/ro); dd if=/dev/zero of=/dev/vda bs=4096 count=1 2>/dev/null; echo ddrc=$?; exit 0'
echo rc4=$?
[ "$before" = "$(sha256sum < $img)" ] && echo ro-unchanged=yes

rm -rf $d
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "rc1="), "0", "{all}");
    let guest = value(&out, "guestsha=");
    assert_eq!(guest.len(), 64, "{all}");
    assert_eq!(guest, value(&out, "hostsha="), "{all}");
    assert_ne!(
        guest, "5647f05ec18958947d32874eeb788fa396a05d0bab7c1b71f112ceb7e9b31eee",
        "pattern is not all zeros"
    );
    assert_eq!(value(&out, "rc2="), "0", "{all}");
    assert_eq!(guest, value(&out, "rereadsha="), "{all}");
    assert_eq!(value(&out, "serial="), "data-disk", "{all}");
    assert_eq!(value(&out, "size="), (64 * 2048).to_string(), "{all}");
    assert_eq!(value(&out, "killed="), "killtest-data", "{all}");
    assert_eq!(value(&out, "ro="), "1", "{all}");
    assert_ne!(value(&out, "ddrc="), "0", "{all}");
    assert_eq!(value(&out, "rc4="), "0", "{all}");
    assert_eq!(value(&out, "ro-unchanged="), "yes", "{all}");
}

/// Another VM on a disk in use is refused; a full host file system fails
/// the guest's writes to that disk only.
#[test]
fn disk_locks_and_a_full_host_file_system() {
    let v = format!("timeout {T} {VMAPP} launch --memory 256");
    let bg = format!("{VMAPP} launch --memory 256");
    let script = format!(
        r#"
{DISK}
echo t5=$(date +%s)
# 5. A second VM on a writable image another VM uses is refused.
{bg} --disk $img -- sh -c 'echo @@up; sleep 600' > $d/out5 2>&1 &
pid=$!
wait_for @@up $d/out5 || echo "first VM never came up: $(cat $d/out5)"
{v} --disk $img -- true 2> $d/err5
echo second-rc=$?
echo second-err=$(cat $d/err5)
{v} --disk $img,ro -- true 2> $d/err6
echo third-rc=$?
kill -9 $pid; wait $pid
echo t6=$(date +%s)

# 6. The host file system fills up mid-run (a sparse image on an 8 MiB tmpfs):
#    those writes fail in the guest, the VM and its other disk keep working.
mkdir $d/full && mount -t tmpfs -o size=8m tmpfs $d/full && truncate -s 64M $d/full/disk.img
{v} --disk $d/full/disk.img --disk $img -- sh -c 'dd if=/dev/urandom of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null; echo fullrc=$?; printf still-fine | dd of=/dev/vdb bs=512 seek=30000 conv=sync,fsync 2>/dev/null; echo otherdisk=$(dd if=/dev/vdb bs=512 skip=30000 count=1 2>/dev/null | head -c 10)'
echo rc6=$?
umount $d/full
echo t7=$(date +%s)
rm -rf $d
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "second-rc="), "1", "{all}");
    let e = value(&out, "second-err=");
    assert!(e.contains("is in use by another VM"), "{all}");
    assert_ne!(
        value(&out, "fullrc="),
        "0",
        "writes past ENOSPC must fail: {all}"
    );
    assert_eq!(value(&out, "otherdisk="), "still-fine", "{all}");
    assert_eq!(value(&out, "rc6="), "0", "{all}");
    assert_eq!(
        value(&out, "third-rc="),
        "1",
        "a read-only open of a disk being written is refused too: {all}"
    );
}
