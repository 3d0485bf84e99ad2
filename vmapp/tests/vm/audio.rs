//! Sound through the VM's audio proxy, against real sound servers running
//! headless in the emulated host as an unprivileged user: PulseAudio with a
//! null sink, then PipeWire (pipewire + wireplumber + pipewire-pulse). A
//! host-root guest plays a 440 Hz tone with the host's `paplay`; the host
//! records the null sink's monitor and measures it (sox), reads the stream's
//! names, switches the VM's audio while it plays and lets it record.

use crate::common::*;

/// Shell functions: `as_user` runs a command as uid 65534 with the
/// server's environment; `start_server` starts the named server for it
/// (its own runtime directory and home) with a null sink called `null`,
/// the default; `freq`, `rms` and `record` measure the null sink's monitor.
const SERVERS: &str = r#"
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups env -u XDG_CONFIG_HOME -u XDG_DATA_HOME \
  -u PULSE_SERVER -u PULSE_COOKIE HOME=$U/home XDG_RUNTIME_DIR=$U/rt-$S "$@"; }
start_server() {
  mkdir -p $U/rt-$S; chmod 700 $U/rt-$S; chown 65534:65534 $U/rt-$S
  case $S in
  pulse)
    as_user pulseaudio -n --daemonize=no --exit-idle-time=-1 --load=module-native-protocol-unix \
      --load="module-null-sink sink_name=null" --load=module-always-sink > $U/$S.log 2>&1 &
    ;;
  pipewire)
    as_user dbus-run-session -- sh -c 'pipewire & sleep 1; wireplumber & sleep 1; exec pipewire-pulse' > $U/$S.log 2>&1 &
    ;;
  esac
  for i in $(seq 100); do as_user pactl info > /dev/null 2>&1 && break; sleep 0.2; done
  if [ $S = pipewire ]; then
    as_user pactl load-module module-null-sink sink_name=null > /dev/null; as_user pactl set-default-sink null
  fi
  echo $S-server=$(as_user pactl info 2>&1 | grep '^Server Name' | tr -d '\n')
  as_user pactl info > /dev/null 2>&1 || echo "$S-server-log=$(tail -c 600 $U/$S.log | tr '\n' ' ')"
}
stop_server() { pkill -u 65534 -x pulseaudio; pkill -u 65534 -x pipewire-pulse; pkill -u 65534 -x wireplumber; pkill -u 65534 -x pipewire; pkill -u 65534 dbus; true; }
# The tone's frequency in a raw recording (silence at either end trimmed),
# and its loudness.
freq() { sox -t raw -r 48000 -e signed -b 16 -c 1 $1 -n silence 1 0.05 2% reverse silence 1 0.05 2% reverse stat 2>&1 | awk '/Rough   frequency/ {print $3}'; }
rms() { sox -t raw -r 48000 -e signed -b 16 -c 1 $1 -n stat 2>&1 | awk '/RMS     amplitude/ {print $3}'; }
record() { as_user timeout $2 pacat -r --device=null.monitor --format=s16le --rate=48000 --channels=1 > $1 2>>$U/record.err; echo $S-recorded=$(stat -c %s $1) >&2; true; }
"#;

/// One server's run: `$S` names the server. vmapp runs as root (host-root
/// mode needs it, see the note on unprivileged host-root), and reaches the
/// user's server as an app would through `PULSE_SERVER` and the user's
/// cookie (`PULSE_COOKIE`).
const STEPS: &str = r#"
N=tone-$S
start_server
export PULSE_SERVER=unix:$U/rt-$S/pulse/native PULSE_COOKIE=$U/home/.config/pulse/cookie
# The app plays, then waits: cut off, its paplay fails and the VM stays.
$V create $N --host-root --memory 512 --expose $U/media --expose $(dirname $EX) -- sh -c "paplay $U/media/tone.wav; echo paplay-rc=\$?; exec sleep 3600" > /dev/null
$V launch $N > $U/$N.out 2>&1 &
L=$!
for i in $(seq 300); do
  as_user pactl list sink-inputs 2>/dev/null | grep -q "\[$N\]" && break
  kill -0 $L 2>/dev/null || break
  sleep 0.5
done
echo $S-names=$(as_user pactl list sink-inputs | grep -E 'media.name|application.name' | tr -d '\t"' | tr '\n' ' ')
record $U/on.raw 8
echo $S-freq=$(freq $U/on.raw)
echo $S-on-rms=$(rms $U/on.raw)
echo $S-list=$($V list | awk -v n=$N '$1==n {print $8}')
# Playback only: recording fails, and the server shows no stream of the VM's.
$V exec $N -- timeout 10 parec --raw /tmp/x.raw > /dev/null 2>$U/parec.err; echo $S-record-rc=$?
echo $S-record-err=$(head -c 200 $U/parec.err | tr '\n' ' ')
echo $S-guest-sources=$(as_user pactl list source-outputs | grep -c "\[$N\]")
# Off while it plays: silence within a second.
$V audio $N off; echo $S-off-rc=$?
echo $S-list-off=$($V list | awk -v n=$N '$1==n {print $8}')
sleep 1
record $U/off.raw 6
echo $S-off-rms=$(rms $U/off.raw)
# Playback again: a raw client of our own (no libpulse) plays 660 Hz.
$V audio $N playback
$V exec $N -- $EX tone /run/vmapp/pulse/native 20 660 > $U/raw.out 2>&1 &
R=$!
for i in $(seq 100); do as_user pactl list sink-inputs 2>/dev/null | grep -q "\[$N\] pa-client" && break; sleep 0.2; done
record $U/raw.raw 6
echo $S-raw-freq=$(freq $U/raw.raw)
wait $R; echo $S-raw-out=$(tr '\n' ' ' < $U/raw.out)
# A hostile client in the guest, while another app plays on the host.
as_user paplay $U/media/tone.wav & P=$!
for i in $(seq 50); do as_user pactl list short sink-inputs | grep -q . && break; sleep 0.2; done
OC=$(as_user pactl list short clients | awk '$3=="pacat" {print $1; exit}')
OI=$(as_user pactl list short sink-inputs | awk '{print $1; exit}')
MODS=$(as_user pactl list short modules | md5sum); DEF=$(as_user pactl get-default-sink)
$V exec $N -- $EX hostile /run/vmapp/pulse/native $OC $OI | sed "s/^/$S-/"
echo $S-modules-same=$([ "$(as_user pactl list short modules | md5sum)" = "$MODS" ] && echo yes)
echo $S-default-same=$([ "$(as_user pactl get-default-sink)" = "$DEF" ] && echo yes)
echo $S-other-plays=$(as_user pactl list short sink-inputs | awk -v i=$OI '$1==i {print "yes"}')
# Full: the guest records what the host plays.
$V audio $N full; echo $S-full-rc=$?
sleep 1
$V exec $N -- sh -c 'timeout 10 parec --device=null.monitor --format=s16le --rate=48000 --channels=1 > /tmp/r.raw; sox -t raw -r 48000 -e signed -b 16 -c 1 /tmp/r.raw -n silence 1 0.05 2% reverse silence 1 0.05 2% reverse stat 2>&1 | awk "/Rough   frequency/ {print \"guest-freq=\" \$3}"' > $U/full.out 2>&1
echo $S-$(grep guest-freq= $U/full.out || echo guest-freq=none $(head -c 300 $U/full.out | tr '\n' ' '))
kill $P 2>/dev/null
$V stop $N; echo $S-stop-rc=$?; wait $L
echo $S-paplay=$(grep -o 'paplay-rc=[0-9]*' $U/$N.out)
$V destroy $N --yes > /dev/null
unset PULSE_SERVER PULSE_COOKIE
stop_server
"#;

#[test]
fn guest_sound_reaches_pulseaudio_and_pipewire_through_the_policy() {
    let script = format!(
        r#"
chmod 0666 /dev/kvm
# The session bus PipeWire wants listens in /tmp (the emulated host's is
# root's own).
chmod 1777 /tmp
# A desktop has /dev/shm (PulseAudio's memory pools) and logind's
# directories (WirePlumber quits without them, and then links no stream):
# the emulated host has neither.
mkdir -p /dev/shm; mountpoint -q /dev/shm || mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mkdir -p /run/systemd/seats /run/systemd/sessions /run/systemd/users /run/systemd/machines
U=$(mktemp -d /tmp/vmapp-audio.XXXXXX); mkdir -p $U/home/.config/pulse $U/cfg $U/media $U/rt; chmod 0700 $U/rt
sox -n -r 48000 -c 2 -b 16 $U/media/tone.wav synth 60 sine 440 vol 0.5
chmod 755 $U $U/media; chmod 644 $U/media/tone.wav
chown -R 65534:65534 $U/home
export XDG_RUNTIME_DIR=$U/rt XDG_CONFIG_HOME=$U/cfg XDG_DATA_HOME=$U/data
V="timeout {T} {VMAPP}"
EX=$(dirname {VMAPP})/examples/pa-client
{SERVERS}
for S in pulse pipewire; do
{STEPS}
done
rm -rf $U
"#
    );
    let (out, err) = in_kvm(&script);
    let all = format!("{out}\n{err}");
    for s in ["pulse", "pipewire"] {
        let v = |k: &str| value(&out, &format!("{s}-{k}=")).to_string();
        assert!(v("server").contains("Server Name"), "{s}: {all}");
        let names = v("names");
        assert!(
            names.contains(&format!("media.name = [tone-{s}]"))
                && names.contains(&format!("application.name = [tone-{s}]")),
            "{s}: the stream and its client carry the VM's tag: {all}"
        );
        let f: f64 = v("freq").parse().unwrap_or(0.0);
        assert!((430.0..450.0).contains(&f), "{s}: heard {f} Hz: {all}");
        let on: f64 = v("on-rms").parse().unwrap_or(0.0);
        assert!(on > 0.1, "{s}: the tone is loud enough ({on}): {all}");
        assert_eq!(v("list"), "playback", "{s}: {all}");
        assert_ne!(v("record-rc"), "0", "{s}: parec must fail: {all}");
        assert!(v("record-err").contains("Access denied"), "{s}: {all}");
        assert_eq!(v("guest-sources"), "0", "{s}: {all}");
        assert_eq!(v("off-rc"), "0", "{s}: {all}");
        assert_eq!(v("list-off"), "off", "{s}: {all}");
        let off: f64 = v("off-rms").parse().unwrap_or(1.0);
        assert!(off < 0.001, "{s}: still playing after off ({off}): {all}");
        let raw: f64 = v("raw-freq").parse().unwrap_or(0.0);
        assert!(
            (650.0..670.0).contains(&raw),
            "{s}: the raw client's tone: {raw} Hz: {all}"
        );
        assert!(v("raw-out").contains("tone-done"), "{s}: {all}");
        for (k, want) in audio_proxy::client::HOSTILE_EXPECTED {
            assert_eq!(v(&format!("hostile-{k}")), *want, "{s}: {k}: {all}");
        }
        for k in ["modules-same", "default-same", "other-plays"] {
            assert_eq!(v(k), "yes", "{s}: {k}: {all}");
        }
        assert_eq!(v("full-rc"), "0", "{s}: {all}");
        let g: f64 = v("guest-freq").parse().unwrap_or(0.0);
        assert!(
            (430.0..450.0).contains(&g),
            "{s}: the guest recorded {g} Hz: {all}"
        );
        assert_eq!(v("stop-rc"), "0", "{s}: {all}");
        // Cut off by `off`, the guest's paplay failed and the VM ran on.
        let rc = v("paplay");
        assert!(
            rc.starts_with("paplay-rc=") && rc != "paplay-rc=0",
            "{s}: {all}"
        );
    }
}
