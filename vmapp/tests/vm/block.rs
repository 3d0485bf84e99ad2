//! virtio-blk end to end: the stock kernel's virtio_blk driver against our
//! device, checked from both sides (guest and host file). Two tests, each one
//! emulated-host run, so that the two run side by side; each runs its steps
//! once per I/O engine ([`ENGINES`]: io_uring, synchronous, and io_uring with
//! `cache=none`), its output lines tagged with the engine's name.

use crate::common::{in_kvm, value, T, VMAPP};

/// 2 MiB, the size of the pattern the guest writes.
const PATTERN: u32 = 2 << 20;

/// (tag, `--disk` options) of each engine the steps run on.
const ENGINES: [(&str, &str); 3] = [
    ("uring", ",aio=io_uring"),
    ("sync", ",aio=sync"),
    ("direct", ",aio=io_uring,cache=none"),
];

/// With `cache=none`, `$img` moves to a file system with `O_DIRECT` (tmpfs
/// has none before Linux 6.6): the emulated KVM host's 9p `scratch` export
/// where there is one (see xtask), else `/tmp` (a real host's).
const DIRECT_IMG: &str = r#"mkdir -p $d/s
if mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=512000 scratch $d/s 2>/dev/null; then
  img=$(mktemp $d/s/blk.XXXXXX); trap 'rm -f $img; umount $d/s' EXIT
else
  img=$d/direct.img; trap 'rm -f $img' EXIT
fi
truncate -s 64M $img
"#;

/// The steps of `steps(tag, opts)` once per engine of `engines`, each
/// engine's output lines prefixed with `TAG.`.
fn per_engine(engines: &[(&str, &str)], steps: impl Fn(&str) -> String) -> String {
    engines
        .iter()
        .map(|(tag, opts)| {
            let setup = if opts.contains("cache=none") {
                DIRECT_IMG
            } else {
                ""
            };
            format!("(\n{setup}{}\n) | sed -u 's/^/{tag}./'\n", steps(opts))
        })
        .collect()
}

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
    let steps = |o: &str| {
        format!(
            r#"
truncate -s 0 $img; truncate -s 64M $img
echo t1=$(date +%s)
# 1. The guest writes a random pattern, flushes, reports its hash.
{v} --disk $img{o} -- sh -c 'dd if=/dev/urandom of=/dev/vda bs=64K count=32 conv=fsync 2>/dev/null && echo guestsha=$(head -c {PATTERN} /dev/vda | sha256sum | cut -d" " -f1); echo bs=$(cat /sys/block/vda/queue/logical_block_size)'
echo rc1=$?
echo hostsha=$(head -c {PATTERN} $img | sha256sum | cut -d" " -f1)

echo t2=$(date +%s)
# 2. A new VM reads the same bytes.
{v} --disk $img{o},serial=data-disk -- sh -c 'echo rereadsha=$(head -c {PATTERN} /dev/vda | sha256sum | cut -d" " -f1); echo serial=$(cat /sys/block/vda/serial); echo size=$(cat /sys/block/vda/size)'
echo rc2=$?

echo t3=$(date +%s)
# 3. After a guest sync, kill -9 of vmapp loses nothing.
{bg} --disk $img{o} -- sh -c 'printf killtest-data | dd of=/dev/vda bs=512 seek=20000 conv=sync 2>/dev/null; sync; echo @@synced; sleep 600' > $d/out3 2>&1 &
pid=$!
wait_for @@synced $d/out3 || echo "never synced: $(cat $d/out3)"
kill -9 $pid; wait $pid
echo killed=$(dd if=$img bs=512 skip=20000 count=1 2>/dev/null | head -c 13)

echo t4=$(date +%s)
# 4. A read-only disk refuses writes; the file is unchanged.
before=$(sha256sum < $img)
{v} --disk $img{o},ro -- sh -c 'echo ro=$(cat /sys/block/vda/ro); dd if=/dev/zero of=/dev/vda bs=4096 count=1 2>/dev/null; echo ddrc=$?; exit 0'
echo rc4=$?
[ "$before" = "$(sha256sum < $img)" ] && echo ro-unchanged=yes
"#
        )
    };
    let script = format!("{DISK}\n{}\nrm -rf $d\n", per_engine(&ENGINES, steps));
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    for (tag, _) in ENGINES {
        let value = |k: &str| value(&out, &format!("{tag}.{k}"));
        assert_eq!(value("rc1="), "0", "{tag}: {all}");
        let guest = value("guestsha=");
        assert_eq!(guest.len(), 64, "{tag}: {all}");
        assert_eq!(guest, value("hostsha="), "{tag}: {all}");
        assert_ne!(
            guest, "5647f05ec18958947d32874eeb788fa396a05d0bab7c1b71f112ceb7e9b31eee",
            "pattern is not all zeros"
        );
        assert_eq!(value("rc2="), "0", "{tag}: {all}");
        assert_eq!(guest, value("rereadsha="), "{tag}: {all}");
        assert_eq!(value("serial="), "data-disk", "{tag}: {all}");
        assert_eq!(value("size="), (64 * 2048).to_string(), "{tag}: {all}");
        assert_eq!(value("killed="), "killtest-data", "{tag}: {all}");
        assert_eq!(value("ro="), "1", "{tag}: {all}");
        assert_ne!(value("ddrc="), "0", "{tag}: {all}");
        assert_eq!(value("rc4="), "0", "{tag}: {all}");
        assert_eq!(value("ro-unchanged="), "yes", "{tag}: {all}");
    }
    // cache=none tells the guest the block size O_DIRECT needs here.
    let bs: u32 = value(&out, "direct.bs=").parse().expect("a block size");
    assert!(bs.is_power_of_two() && (512..=4096).contains(&bs), "{all}");
    assert_eq!(value(&out, "uring.bs="), "512", "{all}");
}

/// Another VM on a disk in use is refused; a full host file system fails
/// the guest's writes to that disk only.
#[test]
fn disk_locks_and_a_full_host_file_system() {
    let v = format!("timeout {T} {VMAPP} launch --memory 256");
    let bg = format!("{VMAPP} launch --memory 256");
    let steps = |o: &str| {
        format!(
            r#"
echo t5=$(date +%s)
# 5. A second VM on a writable image another VM uses is refused.
{bg} --disk $img{o} -- sh -c 'echo @@up; sleep 600' > $d/out5 2>&1 &
pid=$!
wait_for @@up $d/out5 || echo "first VM never came up: $(cat $d/out5)"
{v} --disk $img{o} -- true 2> $d/err5
echo second-rc=$?
echo second-err=$(cat $d/err5)
{v} --disk $img{o},ro -- true 2> $d/err6
echo third-rc=$?
kill -9 $pid; wait $pid
echo t6=$(date +%s)

# 6. The host file system fills up mid-run (a sparse image on an 8 MiB tmpfs):
#    those writes fail in the guest, the VM and its other disk keep working.
mkdir $d/full && mount -t tmpfs -o size=8m tmpfs $d/full && truncate -s 64M $d/full/disk.img
{v} --disk $d/full/disk.img{o} --disk $img{o} -- sh -c 'dd if=/dev/urandom of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null; echo fullrc=$?; printf still-fine | dd of=/dev/vdb bs=512 seek=30000 conv=sync,fsync 2>/dev/null; echo otherdisk=$(dd if=/dev/vdb bs=512 skip=30000 count=1 2>/dev/null | head -c 10)'
echo rc6=$?
umount $d/full; rmdir $d/full
echo t7=$(date +%s)
"#
        )
    };
    // O_DIRECT is not for tmpfs before Linux 6.6: io_uring and sync here.
    let script = format!("{DISK}\n{}\nrm -rf $d\n", per_engine(&ENGINES[..2], steps));
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    for (tag, _) in &ENGINES[..2] {
        let value = |k: &str| value(&out, &format!("{tag}.{k}"));
        assert_eq!(value("second-rc="), "1", "{all}");
        let e = value("second-err=");
        assert!(e.contains("is in use by another VM"), "{all}");
        assert_ne!(value("fullrc="), "0", "writes past ENOSPC must fail: {all}");
        assert_eq!(value("otherdisk="), "still-fine", "{all}");
        assert_eq!(value("rc6="), "0", "{all}");
        assert_eq!(
            value("third-rc="),
            "1",
            "a read-only open of a disk being written is refused too: {all}"
        );
    }
}
