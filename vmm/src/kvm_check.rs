//! Opening `/dev/kvm` and telling whether this KVM can run a stock kernel.

use kvm_ioctls::{Cap, Kvm};

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No /dev/kvm.
    #[error(
        "/dev/kvm does not exist: KVM is not available on this host (load kvm_intel or kvm_amd)"
    )]
    NoDevice,
    /// /dev/kvm is not accessible.
    #[error("no permission to open /dev/kvm (add your user to the 'kvm' group)")]
    NoPermission,
    /// Another error opening /dev/kvm.
    #[error("cannot open /dev/kvm: {0}")]
    Open(std::io::Error),
    /// The hypervisor behind /dev/kvm is PVM, which only runs PVM-enabled guests.
    #[error("/dev/kvm is provided by kvm_pvm, which cannot run stock kernels; run vmapp inside the emulated KVM host instead (`cargo xtask run -- launch ...`)")]
    Pvm,
    /// The CPU has no VMX/SVM.
    #[error("this CPU has no hardware virtualization (no vmx or svm flag); run vmapp inside the emulated KVM host instead (`cargo xtask run -- launch ...`)")]
    NoHardwareVirt,
    /// An extension the VMM needs is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// Another KVM ioctl failure.
    #[error("KVM: {0}")]
    Kvm(kvm_ioctls::Error),
}

/// Checks that the host's KVM is hardware-backed (VMX/SVM) and not PVM.
pub fn check_hardware_virt() -> Result<(), KvmError> {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Err(KvmError::Pvm);
    }
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        let has = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if !has {
            return Err(KvmError::NoHardwareVirt);
        }
    }
    Ok(())
}

/// Opens /dev/kvm and checks the capabilities the VMM relies on.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::NoDevice,
        libc::EACCES | libc::EPERM => KvmError::NoPermission,
        _ => KvmError::Open(std::io::Error::from_raw_os_error(e.errno())),
    })?;
    check_hardware_virt()?;
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}
