//! The network (`--net`): the guest's TAP device relayed over vsock to a
//! passt on the host. Everything runs in a network namespace of the test's
//! own, whose only way out is a TAP device nobody reads (passt needs an
//! interface with a default route): the guest reaches only the HTTP and DNS
//! servers the test runs on that namespace's 127.0.0.1, through passt's
//! mapping of the gateway address to the host's loopback.

use crate::common::{in_kvm, value, T, VMAPP};

const SERVERS: &str = include_str!("net/servers.py");

/// The gateway passt hands out: the namespace's default route.
const GW: &str = "192.0.2.1";

fn script() -> String {
    // The library's own example of a VM with a network (`cargo xtask test`
    // builds the workspace's examples).
    let netex = std::path::Path::new(VMAPP).with_file_name("examples/network");
    assert!(netex.exists(), "{} is not built", netex.display());
    let netex = netex.display();
    format!(
        r#"for t in passt python3 ip unshare; do command -v $t >/dev/null || {{ echo "$t is required" >&2; exit 1; }}; done
d=$(mktemp -d /tmp/vmapp-net.XXXXXX); mkdir -p $d/www $d/cfg $d/data $d/rt; chmod 700 $d/rt
cat > $d/servers.py <<'PYEOF'
{SERVERS}
PYEOF
cat > $d/inner.sh <<'SHEOF'
d=$1
ip link set lo up
ip tuntap add dev t0 mode tap && ip link set t0 up && ip addr add 192.0.2.2/24 dev t0 && ip route add default via {GW}
printf 'nameserver 127.0.0.1\n' > $d/resolv.conf && mount --bind $d/resolv.conf /etc/resolv.conf
export XDG_CONFIG_HOME=$d/cfg XDG_DATA_HOME=$d/data XDG_RUNTIME_DIR=$d/rt
head -c 4M /dev/urandom > $d/www/big; echo @@host-sha=$(sha256sum < $d/www/big | cut -c1-64)
python3 $d/servers.py $d {GW} 2> $d/servers.err & spid=$!
i=0; while [ ! -e $d/servers-up ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "@@nopasst=$(PATH=/nonexistent {VMAPP} launch --net -- true 2>&1 | tail -n 1)"
echo "@@nonet=$(timeout {T} {VMAPP} launch --memory 200 -- sh -c 'echo routes=$(ip -4 route | wc -l) ifs=$(ls /sys/class/net | tr "\n" ,)')"
{VMAPP} create web --memory 256 --net --net-host-loopback --publish 18080:8080 -- sleep 600
timeout 1100 {VMAPP} launch web > $d/web.out 2> $d/web.err & lp=$!
i=0; while [ ! -S $d/rt/vmapp/web/control ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
E="timeout {T} {VMAPP} exec web --"
$E sh -c 'i=0; until ip -4 addr show eth0 | grep -q inet; do i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done
  echo @@addr=$(ip -4 addr show eth0 | sed -n "s/.*inet \([0-9.]*\/[0-9]*\).*/\1/p")
  echo @@gw=$(ip -4 route | sed -n "s/^default via \([0-9.]*\).*/\1/p")
  echo @@mtu=$(cat /sys/class/net/eth0/mtu)
  echo @@dns=$(sed -n "s/^nameserver //p" /etc/resolv.conf | head -n 1)'
$E sh -c 'wget -q -O /tmp/big http://{GW}:8000/big && echo @@guest-sha=$(sha256sum /tmp/big | cut -c1-64)'
$E sh -c 'dd if=/dev/urandom of=/tmp/up bs=1048576 count=8 2>/dev/null; echo @@up-sha="8388608 $(sha256sum /tmp/up | cut -c1-64)"
  nc {GW} 8001 < /tmp/up; echo @@up-rc=$?'
i=0; while [ ! -e $d/upload ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "@@uploaded=$(cat $d/upload 2>/dev/null)"
$E sh -c 'echo @@lookup=$(nslookup files.vmapp.test 2>&1 | sed -n "s/^Address: *\([0-9.]*\)$/\1/p" | tail -n 1)
  echo @@by-name=$(wget -q -O- http://files.vmapp.test:8000/hello)
  echo @@with-timeout=$(wget -T 20 -O- http://{GW}:8000/hello 2>/dev/null; echo " rc=$?")'
echo @@dns-log=$(grep -c '^files.vmapp.test 1$' $d/dns.log)
$E sh -c 'mkdir -p /tmp/www && echo published > /tmp/www/p && httpd -p 8080 -h /tmp/www && echo ok'
echo @@published=$(python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:18080/p", timeout=60).read().decode().strip())')
# Off during a transfer: the transfer stops, passt is gone when the command returns.
$E sh -c 'timeout 30 wget -q -O /dev/null http://{GW}:8000/slow; echo @@slow-rc=$?' > $d/slow.out 2>&1 &
i=0; while [ ! -e $d/slow-started ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
sleep 1
echo @@list-net=$({VMAPP} list | awk '$1 == "web" {{print $7}}')
# The helper's relay (the oldest helper process: it forked the launcher that
# runs passt) is filtered; the launcher is not (passt would inherit it).
echo @@helper-seccomp=$(awk '/^Seccomp:/{{print $2}}' /proc/$(pgrep -of -- __net-helper)/status)
{VMAPP} net web off 2>&1; echo @@off-rc=$?
echo @@list-off=$({VMAPP} list | awk '$1 == "web" {{print $7}}')
echo @@passt-after-off=$(pgrep '^passt' | wc -l)
wait $!
cat $d/slow.out
i=0; while [ ! -e $d/slow-cut ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo @@slow-cut=$(cat $d/slow-cut 2>/dev/null || echo none)
$E sh -c 'sleep 1; echo @@off-routes=$(ip -4 route | wc -l) @@off-up=$(ip link show eth0 | grep -c ",UP")
  timeout 5 wget -q -O- http://{GW}:8000/hello; echo @@off-fetch-rc=$?'
{VMAPP} net web on 2>&1; echo @@on-rc=$?
echo @@passt-after-on=$(pgrep '^passt' | wc -l)
$E sh -c 'i=0; until r=$(timeout 5 wget -q -O- http://{GW}:8000/hello 2>/dev/null); do i=$((i+1)); [ $i -gt 60 ] && break; sleep 0.5; done; echo @@back=$r'
# A guest that sends garbage on the network port: its stream wins the race
# to passt after the network is switched off and on (the relay waits a
# second between tries). A frame of random bytes reaches passt, which
# discards it; the length out of range after it gets the stream reset by
# the vsock device, which says so on vmapp's stderr. The guest is not cut
# off from its VM nor, once the relay is back, from the network.
$E sh -c 'rm -f /tmp/stop-garbage; i=0; while [ $i -lt 3000 ] && [ ! -e /tmp/stop-garbage ]; do i=$((i+1))
    (printf "\000\000\000\100"; head -c 64 /dev/urandom; printf "\377\377\377\377"; head -c 300000 /dev/urandom) \
      | timeout 5 /init vsock connect 2 1026 >/dev/null 2>&1; done; echo @@garbage-tries=$i' > $d/garbage.out 2>&1 &
g=$!
# The relay may win a round (a loaded machine): switch again, up to 8 times.
k=0; while [ $k -lt 8 ] && ! grep -q "out of range on port 1026" $d/web.err; do k=$((k+1))
  sleep 2; {VMAPP} net web off; {VMAPP} net web on; sleep 3; done
echo @@garbage-rounds=$k
$E touch /tmp/stop-garbage; wait $g; cat $d/garbage.out
$E sh -c 'i=0; until r=$(timeout 5 wget -q -O- http://{GW}:8000/hello 2>/dev/null); do i=$((i+1)); [ $i -gt 60 ] && break; sleep 0.5; done; echo @@after-garbage=$r'
echo @@passt-after-garbage=$(pgrep '^passt' | wc -l)
# passt dies: vmapp says so on its stderr, the VM runs on offline, and
# `net on` brings the network back without a restart.
pkill -KILL -f "$d/rt/vmapp/web/.*_1026"
i=0; while ! grep -q "passt ended (signal: 9" $d/web.err && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo @@died-list=$({VMAPP} list | awk '$1 == "web" {{print $7}}')
$E sh -c 'timeout 5 wget -q -O- http://{GW}:8000/hello; echo @@died-fetch-rc=$?'
{VMAPP} net web on 2>&1; echo @@died-on-rc=$?
$E sh -c 'i=0; until r=$(timeout 5 wget -q -O- http://{GW}:8000/hello 2>/dev/null); do i=$((i+1)); [ $i -gt 60 ] && break; sleep 0.5; done; echo @@after-death=$r'
{VMAPP} stop web 2>&1; echo @@stop-rc=$?
wait $lp; echo @@web-rc=$?
sleep 0.5; echo @@passt-after-stop=$(pgrep '^passt' | wc -l)
echo "@@passt-log=$(cat $d/rt/vmapp/web/passt.log 2>/dev/null | tr '\n' ' ')"
# The same through the library alone: VmBuilder::network, VmHandle::set_network.
eval "$({VMAPP} prepare)"
timeout {T} {netex} "$vmlinux" "$initramfs" {GW} 8000 hello hello > $d/lib.out 2> $d/lib.err; echo @@lib-rc=$?
sed 's/^@@/@@lib-/' $d/lib.out; tail -n 5 $d/lib.err | sed 's/^/lib: /' >&2
echo @@passt-after-lib=$(pgrep '^passt' | wc -l)
kill $spid 2>/dev/null
SHEOF
unshare -n -m sh $d/inner.sh $d
echo "@@web-err=$(tr '\n' ' ' < $d/web.err 2>/dev/null)"
echo "@@servers-err=$(tail -n 20 $d/servers.err 2>/dev/null | tr '\n' ' ')"
"#
    )
}

#[test]
fn the_guest_reaches_host_services_by_name_publishes_a_port_and_its_network_switches() {
    let (out, err) = in_kvm(&script());
    let all = format!("{out}\n{err}");
    eprintln!("{all}");
    assert!(
        value(&out, "@@nopasst=").contains("package `passt`"),
        "{all}"
    );
    assert_eq!(value(&out, "@@nonet="), "routes=0 ifs=lo,", "{all}");
    assert_eq!(value(&out, "@@addr="), "192.0.2.2/24", "{all}");
    assert_eq!(value(&out, "@@gw="), GW, "{all}");
    assert_eq!(
        value(&out, "@@guest-sha="),
        value(&out, "@@host-sha="),
        "{all}"
    );
    assert_eq!(value(&out, "@@up-rc="), "0", "{all}");
    assert_eq!(
        value(&out, "@@uploaded="),
        value(&out, "@@up-sha="),
        "{all}"
    );
    assert_eq!(value(&out, "@@mtu="), "65520", "{all}");
    assert_eq!(value(&out, "@@lookup="), GW, "{all}");
    assert_eq!(value(&out, "@@by-name="), "hello", "{all}");
    // The default guest's wget survives -T (busybox 1.35's crashed).
    assert_eq!(value(&out, "@@with-timeout="), "hello rc=0", "{all}");
    assert_ne!(value(&out, "@@dns-log="), "0", "{all}");
    assert_eq!(value(&out, "@@published="), "published", "{all}");
    assert_eq!(value(&out, "@@list-net="), "on", "{all}");
    assert_eq!(value(&out, "@@helper-seccomp="), "2", "{all}");
    assert_eq!(value(&out, "@@off-rc="), "0", "{all}");
    assert_eq!(value(&out, "@@list-off="), "off", "{all}");
    assert_eq!(value(&out, "@@passt-after-off="), "0", "{all}");
    assert_ne!(
        value(&out, "@@slow-rc="),
        "0",
        "the transfer must fail: {all}"
    );
    let cut: u64 = value(&out, "@@slow-cut=")
        .parse()
        .unwrap_or_else(|_| panic!("the server never saw the cut: {all}"));
    assert!(cut < 100 << 20, "{all}");
    assert_eq!(value(&out, "@@off-routes="), "0 @@off-up=0", "{all}");
    assert_ne!(value(&out, "@@off-fetch-rc="), "0", "{all}");
    assert_eq!(value(&out, "@@on-rc="), "0", "{all}");
    assert_eq!(value(&out, "@@passt-after-on="), "1", "{all}");
    assert_eq!(value(&out, "@@back="), "hello", "{all}");
    assert!(
        value(&out, "@@garbage-tries=").parse::<u32>().unwrap_or(0) > 0,
        "{all}"
    );
    // The vsock device read the length out of range and reset the stream
    // (the line is vmapp's, on its stderr).
    assert!(
        value(&out, "@@web-err=").contains("frame length 4294967295 out of range on port 1026"),
        "{all}"
    );
    assert_eq!(value(&out, "@@after-garbage="), "hello", "{all}");
    assert_eq!(value(&out, "@@passt-after-garbage="), "1", "{all}");
    // passt killed: reported, the VM runs on offline, `on` brings it back.
    assert!(
        value(&out, "@@web-err=").contains("passt ended (signal: 9"),
        "{all}"
    );
    assert_eq!(value(&out, "@@died-list="), "off", "{all}");
    assert_ne!(value(&out, "@@died-fetch-rc="), "0", "{all}");
    assert_eq!(value(&out, "@@died-on-rc="), "0", "{all}");
    assert_eq!(value(&out, "@@after-death="), "hello", "{all}");
    assert_eq!(value(&out, "@@stop-rc="), "0", "{all}");
    // The app (`sleep`) ended by the power button's SIGTERM; not 159, a
    // seccomp kill of a thread that reaped the network helper.
    assert_eq!(value(&out, "@@web-rc="), "143", "{all}");
    assert_eq!(value(&out, "@@passt-after-stop="), "0", "{all}");
    // The library path: fetched, cut off while off, back when on, passt gone.
    assert_eq!(value(&out, "@@lib-fetched="), "hello", "{all}");
    assert_ne!(value(&out, "@@lib-off-rc="), "0", "{all}");
    assert_eq!(value(&out, "@@lib-back="), "hello", "{all}");
    assert_eq!(value(&out, "@@lib-rc="), "0", "{all}");
    assert_eq!(value(&out, "@@passt-after-lib="), "0", "{all}");
}
