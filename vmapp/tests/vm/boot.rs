//! Boots the distribution's kernel with `vmapp` and checks what the guest
//! itself reports. On machines whose `/dev/kvm` cannot run stock kernels the
//! VMs run inside the emulated KVM host (see `xtask`).
//!
//! Run through `cargo xtask test`, which builds `sommelier-guest` first.

use std::process::Command;

use crate::common::{in_kvm, prepare, value, T, VMAPP};

const PROBE: &str = "echo nproc=$(nproc); grep MemTotal /proc/meminfo; \
    echo lnro=$(ls -d /sys/bus/platform/devices/LNRO0005:* | wc -l); \
    echo online=$(cat /sys/devices/system/cpu/online)";

/// One `vmapp launch` per entry of `args`, with the probe as command; returns
/// each run's output and exit status.
fn probe_runs(args: &[&str]) -> Vec<(String, i32)> {
    let mut script = String::new();
    for a in args {
        script.push_str(&format!(
            "echo @@RUN; timeout {T} {VMAPP} launch {a} -- sh -c {}; echo @@RC=$?\n",
            xtask::sh_quote(PROBE)
        ));
    }
    let (out, err) = in_kvm(&script);
    let runs: Vec<(String, i32)> = out
        .split("@@RUN\n")
        .skip(1)
        .map(|r| {
            let (body, rc) = r.rsplit_once("@@RC=").expect("run ended");
            (body.to_string(), rc.trim().parse().expect("exit status"))
        })
        .collect();
    assert_eq!(runs.len(), args.len(), "{out}\n{err}");
    runs
}

fn check_probe(out: &str, rc: i32, cpus: u32, mem_mib: u64) {
    assert_eq!(rc, 0, "{out}");
    assert_eq!(value(out, "nproc="), cpus.to_string(), "{out}");
    let online = if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(value(out, "online="), online, "{out}");
    let kib: u64 = value(out, "MemTotal:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let want = mem_mib * 1024;
    assert!(
        kib <= want && kib * 10 >= want * 9,
        "MemTotal {kib} kB is not within 10% of {want} kB"
    );
    // vmapp describes 4 virtio-mmio slots in the DSDT.
    assert_eq!(value(out, "lnro="), "4", "{out}");
}

#[test]
fn boots_vmlinux_through_pvh_with_one_and_two_vcpus() {
    let runs = probe_runs(&["--cpus 1 --memory 1024", "--cpus 2 --memory 1024"]);
    check_probe(&runs[0].0, runs[0].1, 1, 1024);
    check_probe(&runs[1].0, runs[1].1, 2, 1024);
}

#[test]
fn boots_bzimage_with_one_and_two_vcpus() {
    let runs = probe_runs(&[
        "--bzimage --cpus 1 --memory 1024",
        "--bzimage --cpus 2 --memory 1024",
    ]);
    check_probe(&runs[0].0, runs[0].1, 1, 1024);
    check_probe(&runs[1].0, runs[1].1, 2, 1024);
}

#[test]
fn exit_status_poweroff_reboot_and_panic() {
    // The library's example of two VMs at once, one stopped by its handle
    // (`cargo test` builds examples).
    let two_vms = std::path::Path::new(VMAPP).with_file_name("examples/two_vms");
    assert!(two_vms.exists(), "{} is not built", two_vms.display());
    let script = format!(
        "{v} launch --env V=42 --workdir /tmp -- sh -c 'echo to-stdout v=$V $(pwd); echo to-stderr >&2; exit 7'; \
         echo @@exit7=$?\n\
         head -c 3000000 /dev/urandom > /tmp/vmapp-cat-in.$$; \
         {v} launch -- cat < /tmp/vmapp-cat-in.$$ > /tmp/vmapp-cat-out.$$; echo @@cat=$?\n\
         cmp -s /tmp/vmapp-cat-in.$$ /tmp/vmapp-cat-out.$$ && echo @@catcmp=same || echo @@catcmp=differ\n\
         {v} launch -- no-such-program; echo @@missing=$?\n\
         {VMAPP} launch --keep-running -- sh -c 'echo kept-running' > /tmp/vmapp-kr.$$ 2>&1 & p=$!; \
         i=0; while ! grep -q kept-running /tmp/vmapp-kr.$$ && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done; \
         sleep 3; n=$({VMAPP} list | awk '/^vmapp-/{{print $1; exit}}'); \
         echo @@kept=$({VMAPP} exec $n -- echo alive); kill -9 $p; wait $p\n\
         {v} launch -- poweroff -f; echo @@poweroff=$?\n\
         eval \"$({VMAPP} prepare)\"; echo release=$release; timeout {T} {two} \"$vmlinux\" \"$initramfs\"; echo @@twovms=$?\n\
         {v} launch -- reboot -f; echo @@reboot=$?\n\
         {v} launch -- sh -c 'echo c > /proc/sysrq-trigger'; echo @@panic=$?\n",
        v = format!("timeout {T} {VMAPP}"),
        two = two_vms.display(),
    );
    let (out, err) = in_kvm(&script);
    let rc = |k: &str| value(&out, &format!("@@{k}=")).to_string();
    assert_eq!(rc("exit7"), "7", "{out}\n{err}");
    // Through the vsock agent each guest stream lands on its own; the
    // environment and working directory reach the command.
    assert!(
        out.contains("to-stdout v=42 /tmp\n") && !out.contains("to-stderr"),
        "{out}"
    );
    assert!(
        err.contains("to-stderr\n") && !err.contains("to-stdout"),
        "{err}"
    );
    assert_eq!(rc("cat"), "0", "{out}\n{err}");
    assert_eq!(value(&out, "@@catcmp="), "same", "{out}\n{err}");
    assert_eq!(rc("missing"), "127", "{out}\n{err}");
    // Still running its guest after its command ended: a further command
    // runs in it.
    assert_eq!(
        value(&out, "@@kept="),
        "alive",
        "--keep-running: {out}\n{err}"
    );
    assert!(err.contains("no-such-program"), "{err}");
    assert_eq!(rc("poweroff"), "0", "{out}\n{err}");
    assert_eq!(rc("reboot"), "70", "{out}\n{err}");
    assert!(err.contains("the guest rebooted"), "{err}");
    assert_eq!(rc("panic"), "70", "{out}\n{err}");
    assert!(err.contains("the guest kernel panicked"), "{err}");
    assert!(!err.contains("panicked at"), "vmapp itself panicked: {err}");
    assert_eq!(rc("twovms"), "0", "{out}\n{err}");
    assert!(out.contains("b says hello"), "{out}");
    assert!(
        out.contains("two_vms: b stopped: PowerOff; a still running: true")
            && out.contains("two_vms: a stopped: Stopped"),
        "{out}\n{err}"
    );
    // `VmHandle::exec`: a further command in a running VM.
    let release = value(&out, "release=");
    assert!(
        out.contains(&format!(
            "two_vms: in a: uname -r printed {release:?}, Code(0)"
        )),
        "{out}\n{err}"
    );
}

/// Bad input is reported on one line before any VM is created, so these run
/// directly on every host.
#[test]
fn bad_input_is_one_line_and_non_zero() {
    prepare();
    let dir = std::env::temp_dir().join(format!("vmapp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("not-a-kernel");
    std::fs::write(&text, "hello").unwrap();
    // A cpio archive cut in the middle of its first file.
    let img = String::from_utf8_lossy(&Command::new(VMAPP).arg("prepare").output().unwrap().stdout)
        .into_owned();
    let initramfs = value(&img, "initramfs=").to_string();
    let vmlinux = value(&img, "vmlinux=").to_string();
    let data = std::fs::read(&initramfs).unwrap();
    let truncated = dir.join("truncated.cpio");
    std::fs::write(&truncated, &data[..data.len() / 3]).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--kernel".into(), "/nonexistent/vmlinux".into()],
            "cannot read kernel /nonexistent/vmlinux",
        ),
        (
            vec!["--kernel".into(), text.display().to_string()],
            "is not a Linux kernel",
        ),
        (
            vec![
                "--kernel".into(),
                vmlinux.clone(),
                "--initramfs".into(),
                truncated.display().to_string(),
            ],
            "is truncated",
        ),
        (vec!["--cpus".into(), "0".into()], "invalid vCPU count 0"),
        (
            vec!["--memory".into(), "100000000".into()],
            "more than the host's",
        ),
        (vec!["--memory".into(), "4".into()], "too small"),
        (
            vec!["--disk".into(), "/nonexistent/disk.img".into()],
            "cannot open disk image /nonexistent/disk.img",
        ),
        (
            vec!["--disk".into(), "x.img,bogus".into()],
            "bad disk description",
        ),
    ];
    for (args, want) in cases {
        let o = Command::new(VMAPP)
            .arg("launch")
            .args(&args)
            .arg("--")
            .arg("true")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line expected: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // On a PVM host, running directly says so.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        let o = Command::new(VMAPP)
            .args(["launch", "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("kvm_pvm") && err.contains("emulated KVM host"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
