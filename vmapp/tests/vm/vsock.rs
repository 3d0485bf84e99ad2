//! virtio-vsock end to end: the stock kernel's vsock driver against our
//! device, host side through Firecracker's Unix-socket protocol with `socat`,
//! guest side with the default guest's `/init vsock` tool.

use crate::common::{in_kvm, value, T, VMAPP};

/// Bytes streamed each way.
const STREAM: u32 = 256 << 20;
/// Seconds a VM streaming [`STREAM`] may take under the emulated host.
const TS: u32 = 900;

/// socat present, each test's scratch directory `$d`, and `wait_for TEXT
/// FILE` (gives up after about four minutes).
const PRELUDE: &str = r#"command -v socat >/dev/null || { echo "socat is required (apt-get install socat)" >&2; exit 1; }
d=$(mktemp -d /tmp/vmapp-vsock.XXXXXX); mkdir -m 700 $d/vs
wait_for() { i=0; while ! grep -q "$1" "$2" 2>/dev/null; do i=$((i+1)); [ $i -gt 1200 ] && return 1; sleep 0.2; done; }
"#;

/// The host connects in: a stream echoed back, 64 at once, refusals.
/// (Two tests, so that the two emulated hosts run side by side.)
#[test]
fn host_connects_in_streams_echo_concurrency_and_refusals() {
    let script = format!(
        r#"
{PRELUDE}head -c {STREAM} /dev/urandom > $d/data
head -c 65536 $d/data > $d/small
echo datasha=$(sha256sum < $d/data | cut -d' ' -f1)

# VM 1: a guest echo server on port 5000; the host connects in.
{VMAPP} launch --memory 256 --vsock $d/vs/v.sock -- /init vsock echo 5000 > $d/out1 2>&1 &
vm=$!
wait_for @@listening $d/out1 || echo "no echo server: $(cat $d/out1)"
(printf 'CONNECT 5000\n'; cat $d/data) | timeout {TS} socat -t 120 - UNIX-CONNECT:$d/vs/v.sock > $d/back
echo okline=$(head -n 1 $d/back | cut -d' ' -f1)
n=$(head -n 1 $d/back | wc -c)
echo echosha=$(tail -c +$((n + 1)) $d/back | sha256sum | cut -d' ' -f1)
rm -f $d/back $d/data
for i in $(seq 1 64); do
  ( (printf 'CONNECT 5000\n'; cat $d/small) | timeout {T} socat -t 120 - UNIX-CONNECT:$d/vs/v.sock | tail -c 65536 > $d/c$i; touch $d/done$i ) &
done
for i in $(seq 1 64); do while [ ! -e $d/done$i ]; do sleep 0.2; done; done
pass=0; for i in $(seq 1 64); do cmp -s $d/c$i $d/small && pass=$((pass + 1)); done
echo concurrent=$pass
start=$(date +%s)
echo refused-bytes=$(printf 'CONNECT 5999\n' | timeout 60 socat -t 60 - UNIX-CONNECT:$d/vs/v.sock | wc -c)
echo refused-secs=$(( $(date +%s) - start ))
printf 'HELLO\n' | timeout 60 socat -t 5 - UNIX-CONNECT:$d/vs/v.sock > $d/garbage; echo garbage-bytes=$(wc -c < $d/garbage)
(printf 'CONNECT 5000\n'; printf still-serving) | timeout 60 socat -t 60 - UNIX-CONNECT:$d/vs/v.sock | tail -c 13 > $d/after
echo after=$(cat $d/after)
kill $vm; wait $vm
rm -rf $d
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    let data = value(&out, "datasha=");
    assert_eq!(value(&out, "okline="), "OK", "{all}");
    assert_eq!(
        value(&out, "echosha="),
        data,
        "host→guest→host stream: {all}"
    );
    assert_eq!(value(&out, "concurrent="), "64", "{all}");
    assert_eq!(value(&out, "refused-bytes="), "0", "{all}");
    let secs: u64 = value(&out, "refused-secs=").parse().unwrap();
    assert!(secs < 10, "refusal took {secs} s: {all}");
    assert_eq!(value(&out, "garbage-bytes="), "0", "{all}");
    assert_eq!(value(&out, "after="), "still-serving", "{all}");
}

/// The guest connects out: a stream to a host listener, and a refusal.
#[test]
fn guest_connects_out_and_is_refused_where_nobody_listens() {
    let script = format!(
        r#"
{PRELUDE}# VM 2: the guest connects out to host port 6000 (PATH_6000), and to an unbound 6001.
timeout {TS} socat -u UNIX-LISTEN:$d/vs/v.sock_6000 CREATE:$d/recv &
lst=$!
i=0; while [ ! -S $d/vs/v.sock_6000 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
timeout {TS} {VMAPP} launch --memory 1024 --vsock $d/vs/v.sock -- sh -c 'head -c {STREAM} /dev/urandom > /tmp/x; echo gsha=$(sha256sum < /tmp/x | cut -d" " -f1); /init vsock connect 2 6000 < /tmp/x; echo sendrc=$?; /init vsock connect 2 6001 < /dev/null; echo refusedrc=$?'
echo vm2rc=$?
wait $lst
echo hsha=$(sha256sum < $d/recv | cut -d' ' -f1)
rm -rf $d
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    assert_eq!(value(&out, "vm2rc="), "0", "{all}");
    assert_eq!(value(&out, "sendrc="), "0", "{all}");
    assert_eq!(
        value(&out, "gsha="),
        value(&out, "hsha="),
        "guest→host stream: {all}"
    );
    assert_eq!(value(&out, "refusedrc="), "1", "{all}");
}
