//! Sound through the VM's audio proxy, against real sound servers running
//! headless in the emulated host as an unprivileged user: PulseAudio with a
//! null sink, then PipeWire (pipewire + wireplumber + pipewire-pulse). A
//! host-root guest plays a 440 Hz tone with the host's `paplay`; the host
//! records the null sink's monitor and measures it (sox), reads the stream's
//! names, switches the VM's audio while it plays and lets it record.

use crate::common::*;

/// Starts the named sound server for uid 65534 (its own runtime directory
/// and home) with a null sink called `null`, the default.
const SERVERS: &str = r#"
start_server() {
  case $1 in
  pulse)
    pulseaudio -n --daemonize=no --exit-idle-time=-1 --load=module-native-protocol-unix \
      --load="module-null-sink sink_name=null" --load=module-always-sink > $U/$1.log 2>&1 &
    ;;
  pipewire)
    pipewire > $U/$1.log 2>&1 &
    sleep 1; wireplumber >> $U/$1.log 2>&1 &
    sleep 1; pipewire-pulse >> $U/$1.log 2>&1 &
    ;;
  esac
  for i in $(seq 100); do pactl info > /dev/null 2>&1 && break; sleep 0.2; done
  if [ $1 = pipewire ]; then
    pactl load-module module-null-sink sink_name=null > /dev/null; pactl set-default-sink null
  fi
  echo $1-server=$(pactl info 2>&1 | grep '^Server Name' | tr -d '\n')
}
# The tone's frequency in a raw recording (silence at either end trimmed),
# and its loudness.
freq() { sox -t raw -r 48000 -e signed -b 16 -c 1 $1 -n silence 1 0.05 2% reverse silence 1 0.05 2% reverse stat 2>&1 | awk '/Rough   frequency/ {print $3}'; }
rms() { sox -t raw -r 48000 -e signed -b 16 -c 1 $1 -n stat 2>&1 | awk '/RMS     amplitude/ {print $3}'; }
record() { timeout $2 pacat -r --device=null.monitor --format=s16le --rate=48000 --channels=1 > $1 2>/dev/null; true; }
"#;

/// One server's run, as uid 65534: `$1` names the server.
const STEPS: &str = r#"
S=$1; N=tone-$S
start_server $S
$V create $N --host-root --memory 512 --expose $U/media -- paplay $U/media/tone.wav
$V launch $N > $U/$N.out 2>&1 &
L=$!
for i in $(seq 600); do pactl list sink-inputs 2>/dev/null | grep -q "\[$N\]" && break; sleep 0.5; done
echo $S-names=$(pactl list sink-inputs | grep -E 'media.name|application.name' | tr -d '\t"' | tr '\n' ' ')
record $U/on.raw 3
echo $S-freq=$(freq $U/on.raw)
echo $S-on-rms=$(rms $U/on.raw)
echo $S-list=$($V list | awk -v n=$N '$1==n {print $8}')
# Playback only: recording fails, and the server shows no stream of the VM's.
$V exec $N -- timeout 10 parec --raw /tmp/x.raw > /dev/null 2>$U/parec.err; echo $S-record-rc=$?
echo $S-record-err=$(head -c 200 $U/parec.err | tr '\n' ' ')
echo $S-guest-sources=$(pactl list source-outputs | grep -c "\[$N\]")
# Off while it plays: silence within a second.
$V audio $N off; echo $S-off-rc=$?
echo $S-list-off=$($V list | awk -v n=$N '$1==n {print $8}')
sleep 1
record $U/off.raw 2
echo $S-off-rms=$(rms $U/off.raw)
# Full: the guest records what the host plays.
$V audio $N full; echo $S-full-rc=$?
paplay $U/media/tone.wav & P=$!
sleep 1
$V exec $N -- sh -c 'timeout 4 parec --device=null.monitor --format=s16le --rate=48000 --channels=1 > /tmp/r.raw; sox -t raw -r 48000 -e signed -b 16 -c 1 /tmp/r.raw -n silence 1 0.05 2% reverse silence 1 0.05 2% reverse stat 2>&1 | awk "/Rough   frequency/ {print \"guest-freq=\" \$3}"' > $U/full.out 2>&1
echo $S-$(grep guest-freq= $U/full.out || echo guest-freq=none $(head -c 300 $U/full.out | tr '\n' ' '))
kill $P 2>/dev/null
$V stop $N; wait $L; echo $S-stop-rc=$?
$V destroy $N --yes > /dev/null
"#;

#[test]
fn guest_sound_reaches_pulseaudio_and_pipewire_through_the_policy() {
    let script = format!(
        r#"
chmod 0666 /dev/kvm
# The session bus PipeWire wants listens in /tmp (the emulated host's is
# root's own).
chmod 1777 /tmp
U=$(mktemp -d /tmp/vmapp-audio.XXXXXX); mkdir -p $U/rt $U/home $U/cfg $U/media; chmod 0700 $U/rt
sox -n -r 48000 -c 2 -b 16 $U/media/tone.wav synth 60 sine 440 vol 0.5
chmod 755 $U $U/media; chmod 644 $U/media/tone.wav
chown -R 65534:65534 $U
cat > $U/run.sh <<'INNER'
V="timeout {T} {VMAPP}"
{SERVERS}
{STEPS}
INNER
for S in pulse pipewire; do
  mkdir -p $U/rt-$S; chmod 700 $U/rt-$S; chown 65534:65534 $U/rt-$S
  setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=$U/home XDG_RUNTIME_DIR=$U/rt-$S \
    XDG_CONFIG_HOME=$U/cfg XDG_DATA_HOME=$U/home/data U=$U PATH=$PATH XDG_CACHE_HOME=$XDG_CACHE_HOME \
    dbus-run-session -- sh -c "sh $U/run.sh $S; kill \$(jobs -p) 2>/dev/null; pkill -u 65534 -x pipewire; pkill -u 65534 -x wireplumber; pkill -u 65534 -x pipewire-pulse; pkill -u 65534 -x pulseaudio; true"
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
        assert_eq!(v("full-rc"), "0", "{s}: {all}");
        let g: f64 = v("guest-freq").parse().unwrap_or(0.0);
        assert!(
            (430.0..450.0).contains(&g),
            "{s}: the guest recorded {g} Hz: {all}"
        );
        assert_eq!(v("stop-rc"), "0", "{s}: {all}");
    }
}
