//! The VM: built from a [`VmBuilder`], started by [`Vm::start`] (a
//! [`VmHandle`] to stop it and wait for it) or run to completion by
//! [`Vm::run`].
//!
//! Threads: `vmm` runs the event loop (waits for a stop from the guest, the
//! host or a vCPU exit, then tears the VM down); one thread per vCPU
//! (`vcpuN`) runs KVM_RUN and dispatches port-I/O and MMIO exits to the
//! buses; `console-in` forwards stdin to the UART when the console is the
//! terminal. The caller's thread gets no seccomp filter and no signal mask.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use devices::bus::{Bus, BusError};
use devices::legacy::{
    AcpiPm, BootStatus, BootStatusState, GuestStop, I8042Reset, PvPanic, Serial, StopReason,
    ACPI_PM_LEN, BOOT_STATUS_LEN,
};
use devices::virtio::block::{Block, BlockError, DiskConfig};
use devices::virtio::fs::{Fs, FsError, ShareConfig};
use devices::virtio::gpu::{Gpu, GpuConfig, GpuError};
use devices::virtio::mmio::{reg, MmioError, MmioTransport, MMIO_SIZE};
use devices::virtio::vsock::{Vsock, VsockConfig, VsockError};
use devices::virtio::{EmptySlot, GuestMapper, VirtioDevice};

use seccomp_policies::{Mode, SeccompError, ThreadKind};

use crate::acpi::{self, AcpiError, MmioSlot};
use crate::boot::{self, BootError};
use crate::console::{self, Console, ConsoleError, RawTerminal};
use crate::cpu::{self, CpuError, VcpuStop};
use crate::kvm_check::{self, KvmError};
use crate::layout::*;
use crate::memory::{self, MemoryError};

/// The command line every guest gets before the user's additions.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 pci=off";

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A VM-level KVM ioctl failed.
    #[error("{what}")]
    VmIoctl {
        /// Which step.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel or initramfs.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// A vCPU.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// Device placement.
    #[error("device layout")]
    Bus(#[from] BusError),
    /// A virtio transport.
    #[error("virtio-mmio transport")]
    Mmio(#[from] MmioError),
    /// The console.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A disk image.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// A seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The vsock device.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A shared directory (virtio-fs).
    #[error(transparent)]
    Share(#[from] FsError),
    /// The GPU device.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The network (passt).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A host resource (eventfd, thread, signal handler).
    #[error("host resource")]
    Io(#[from] std::io::Error),
}

/// Why the VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reboot (ACPI reset register, i8042 reset).
    Reset,
    /// The guest kernel panicked (pvpanic).
    Panic,
    /// The guest triple-faulted.
    TripleFault,
    /// The host stopped it ([`VmHandle::stop`]).
    Stopped,
}

/// How a VM run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmExit {
    /// Why the VM stopped.
    pub reason: ExitReason,
    /// The exit status the guest init reported for its application, if any.
    pub app_exit_status: Option<u8>,
    /// Time from [`VmBuilder::start_time`] to the guest init's boot-timer write.
    pub boot_time: Option<Duration>,
}

/// Configures a VM.
///
/// ```no_run
/// use vmm::{Console, VmBuilder};
/// let exit = VmBuilder::new("/boot/vmlinux")
///     .initramfs("/tmp/initramfs.cpio")
///     .memory_mib(256)
///     .vcpus(2)
///     .append_cmdline("quiet")
///     .console(Console::Stdio)
///     .build()?
///     .run()?;
/// println!("guest stopped: {:?}", exit.reason);
/// # Ok::<(), vmm::VmError>(())
/// ```
pub struct VmBuilder {
    kernel: PathBuf,
    initramfs: Option<PathBuf>,
    /// The initramfs as [`VmBuilder::check`] read it.
    initrd_data: Option<Vec<u8>>,
    mem_mib: u64,
    vcpus: u8,
    cmdline: String,
    console: Console,
    devices: Vec<Box<dyn VirtioDevice>>,
    disks: Vec<DiskConfig>,
    vsock: Option<VsockConfig>,
    shares: Vec<ShareConfig>,
    gpu: Option<GpuConfig>,
    network: Option<crate::net::NetConfig>,
    empty_slots: usize,
    start: Instant,
    seccomp: Mode,
}

impl VmBuilder {
    /// A VM that boots `kernel` (an ELF vmlinux or a bzImage) with 512 MiB,
    /// one vCPU, [`BASE_CMDLINE`] and its console on stdio.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initramfs: None,
            initrd_data: None,
            mem_mib: 512,
            vcpus: 1,
            cmdline: BASE_CMDLINE.to_string(),
            console: Console::Stdio,
            devices: Vec::new(),
            disks: Vec::new(),
            vsock: None,
            shares: Vec::new(),
            gpu: None,
            network: None,
            empty_slots: 0,
            start: Instant::now(),
            seccomp: seccomp_policies::default_mode(),
        }
    }

    /// What a syscall outside a thread's seccomp filter does (default: kill).
    /// Every VMM thread installs its filter before it touches guest input; the
    /// mode also becomes the process default, which device threads started
    /// later (by `build`, or by devices created after this call) use.
    pub fn seccomp(mut self, mode: Mode) -> Self {
        seccomp_policies::set_default_mode(mode);
        self.seccomp = mode;
        self
    }

    /// The initramfs (cpio, optionally compressed).
    pub fn initramfs(mut self, path: impl Into<PathBuf>) -> Self {
        self.initramfs = Some(path.into());
        self.initrd_data = None;
        self
    }

    /// Checks what [`VmBuilder::build`] checks first — the disks and shared
    /// directories open, the vCPU count, the kernel, the memory size, the
    /// initramfs (read now and kept for `build`) — and that KVM can run the
    /// VM. For embedders that confine
    /// themselves before `build` (vmapp's jail) and report bad input first.
    pub fn check(mut self) -> Result<Self, VmError> {
        // In build's order: the devices' files first (opened and closed
        // again; no device thread starts here).
        for d in &self.disks {
            devices::virtio::block::Disk::open(d)?;
        }
        for s in &self.shares {
            devices::virtio::fs::Share::new(&s.host_dir, s.read_only).map_err(FsError::from)?;
        }
        check_config(&self)?;
        if self.initrd_data.is_none() {
            if let Some(p) = &self.initramfs {
                self.initrd_data = Some(boot::read_initrd(p)?);
            }
        }
        kvm_check::open()?;
        Ok(self)
    }

    /// Guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.mem_mib = mib;
        self
    }

    /// Number of vCPUs (1..=254).
    pub fn vcpus(mut self, n: u8) -> Self {
        self.vcpus = n;
        self
    }

    /// Replaces the whole kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = cmdline.into();
        self
    }

    /// Appends to the kernel command line.
    pub fn append_cmdline(mut self, extra: &str) -> Self {
        if !extra.is_empty() {
            if !self.cmdline.is_empty() {
                self.cmdline.push(' ');
            }
            self.cmdline.push_str(extra);
        }
        self
    }

    /// Where the serial console goes.
    pub fn console(mut self, console: Console) -> Self {
        self.console = console;
        self
    }

    /// Adds a virtio-blk disk. Disks take the first virtio-mmio slots, in
    /// the order they are added (`/dev/vda`, `/dev/vdb`, …). The image is
    /// opened and locked by [`build`](Self::build).
    pub fn disk(mut self, cfg: DiskConfig) -> Self {
        self.disks.push(cfg);
        self
    }

    /// Adds the virtio-vsock device (after the disks): host clients connect
    /// to `cfg.uds_path` with Firecracker's `CONNECT <port>` protocol, guest
    /// connections to the host's port P go to `{uds_path}_P`.
    pub fn vsock(mut self, cfg: VsockConfig) -> Self {
        self.vsock = Some(cfg);
        self
    }

    /// Shares a host directory with the guest (virtio-fs, after the disks and
    /// the vsock device). The guest mounts it by its tag
    /// (`mount -t virtiofs TAG DIR`); a read-only share is enforced by the
    /// device. The directory is opened by [`build`](Self::build). The device
    /// holds an fd for each inode the guest keeps cached, within a budget
    /// taken from the fd limit when it is built: call
    /// [`raise_open_files_limit`](crate::raise_open_files_limit) first (a
    /// process-wide change the library leaves to the embedder; vmapp does).
    pub fn share(mut self, cfg: ShareConfig) -> Self {
        self.shares.push(cfg);
        self
    }

    /// Adds the virtio-gpu device (cross-domain only, after the shares): each
    /// guest Wayland client becomes a connection to `cfg.wayland_socket`.
    /// Its host-visible window is placed above guest RAM.
    pub fn gpu(mut self, cfg: GpuConfig) -> Self {
        self.gpu = Some(cfg);
        self
    }

    /// Adds a virtio device in the next virtio-mmio slot.
    pub fn device(mut self, dev: Box<dyn VirtioDevice>) -> Self {
        self.devices.push(dev);
        self
    }

    /// At least `n` virtio-mmio slots; those without a device are empty
    /// placeholders (device id 0) that the guest lists but does not drive.
    pub fn min_mmio_slots(mut self, n: usize) -> Self {
        self.empty_slots = n;
        self
    }

    /// The instant boot time is measured from (default: when the builder was made).
    pub fn start_time(mut self, t: Instant) -> Self {
        self.start = t;
        self
    }

    /// Gives the guest a network without a network device
    /// ([`crate::net`]): while the VM runs, a passt listens for the guest's
    /// stream to host vsock port [`NET_PORT`](crate::net::NET_PORT) (so the
    /// VM needs [`vsock`](Self::vsock)); [`VmHandle::set_network`] turns it
    /// off and on. The guest must relay its frames there: the default guest
    /// does when its command line has `vmapp.net=1026`.
    pub fn network(mut self, cfg: crate::net::NetConfig) -> Self {
        self.network = Some(cfg);
        self
    }

    /// Checks the configuration and KVM, and sets the VM up.
    pub fn build(mut self) -> Result<Vm, VmError> {
        let network = match (self.network.take(), self.vsock.as_mut()) {
            (Some(n), Some(v)) => {
                n.binary()?;
                if !v.framed_ports.contains(&crate::net::NET_PORT) {
                    v.framed_ports.push(crate::net::NET_PORT);
                }
                Some(crate::net::Network::new(n, &v.uds_path))
            }
            (Some(_), None) => return Err(crate::net::NetError::NoVsock.into()),
            (None, _) => None,
        };
        let info = VmInfo {
            memory_mib: self.mem_mib,
            vcpus: self.vcpus,
            vsock: self.vsock.as_ref().map(|v| v.uds_path.clone()),
        };
        let mut devs: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for d in &self.disks {
            devs.push(Box::new(Block::new(d)?));
        }
        if let Some(v) = self.vsock.take() {
            devs.push(Box::new(Vsock::new(v)?));
        }
        for (i, s) in self.shares.iter().enumerate() {
            if self.shares[..i].iter().any(|o| o.tag == s.tag) {
                return Err(VmError::Config(format!(
                    "two shares have the tag {:?}",
                    s.tag
                )));
            }
            devs.push(Box::new(Fs::new(s)?));
        }
        if let Some(g) = self.gpu.take() {
            devs.push(Box::new(Gpu::new(g)?));
        }
        devs.append(&mut self.devices);
        self.devices = devs;
        let mut vm = Vm::new(self)?;
        vm.info = info;
        vm.network = network;
        Ok(vm)
    }
}

/// `virtio_mmio.device=` parameters for the slots with a device (for kernels
/// built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES; others use the DSDT).
pub fn virtio_mmio_cmdline(slots: &[MmioSlot]) -> String {
    slots
        .iter()
        .map(|s| {
            format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                s.size / 1024,
                s.base,
                s.irq
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Guest mappings of host memory for device shared-memory windows: one KVM
/// memory slot each, numbered above the RAM slots.
struct KvmMapper {
    vm: Arc<VmFd>,
    first: u32,
    slots: Mutex<Vec<bool>>,
}

impl GuestMapper for KvmMapper {
    fn map(&self, gpa: u64, host_addr: u64, size: u64, writable: bool) -> std::io::Result<u32> {
        let mut used = devices::bus::lock(&self.slots);
        let i = used
            .iter()
            .position(|u| !u)
            .ok_or_else(|| std::io::Error::other("no free KVM memory slot"))?;
        let slot = self.first + i as u32;
        let r = kvm_userspace_memory_region {
            slot,
            flags: if writable {
                0
            } else {
                kvm_bindings::KVM_MEM_READONLY
            },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller (a device) keeps `size` bytes at `host_addr`
        // mapped until it has called `unmap` for this slot (GuestMapper's
        // contract); KVM checks the range is mapped in this process.
        unsafe { self.vm.set_user_memory_region(r) }
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        used[i] = true;
        Ok(slot)
    }

    fn unmap(&self, slot: u32) -> std::io::Result<()> {
        let mut used = devices::bus::lock(&self.slots);
        let i = slot
            .checked_sub(self.first)
            .map(|i| i as usize)
            .filter(|&i| used.get(i) == Some(&true))
            .ok_or_else(|| std::io::Error::other("not a mapped slot"))?;
        let r = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a zero-sized region deletes the slot; no memory is referenced.
        unsafe { self.vm.set_user_memory_region(r) }
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        used[i] = false;
        Ok(())
    }
}

/// Where device shared-memory windows start: the first 1 GiB boundary above
/// guest RAM (and above the 32-bit MMIO hole).
pub fn shm_windows_base(mem_mib: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    let top = match (mem_mib << 20).checked_sub(MMIO_GAP_START) {
        Some(high) => MMIO_GAP_END + high,
        None => MMIO_GAP_END,
    };
    top.div_ceil(GIB) * GIB
}

/// A VM ready to run.
pub struct Vm {
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<Serial>>,
    stdin_input: bool,
    guest_stop: Arc<GuestStop>,
    wake: EventFd,
    boot_status: Arc<Mutex<BootStatusState>>,
    seccomp: Mode,
    host_stop: Arc<AtomicBool>,
    power_button: Arc<EventFd>,
    info: VmInfo,
    network: Option<crate::net::Network>,
}

/// What a VM was built with ([`VmHandle::info`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmInfo {
    /// Guest RAM, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The vsock device's host socket, if it has one.
    pub vsock: Option<PathBuf>,
}

/// A running VM (from [`Vm::start`]): stop it, ask whether it ended, run a
/// further command in it, wait for why it stopped.
pub struct VmHandle {
    thread: std::thread::JoinHandle<Result<VmExit, VmError>>,
    stopper: Stopper,
    started: Instant,
    info: VmInfo,
    network: Option<Mutex<crate::net::Network>>,
}

/// Stops a running VM from any thread ([`VmHandle::stopper`]); cloneable.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    power_button: Arc<EventFd>,
}

impl Stopper {
    /// Asks the guest to shut down: presses the ACPI power button (a Generic
    /// Event Device interrupt that notifies a `PNP0C0C` button; Linux's
    /// `button` driver reports KEY_POWER). The default guest then ends its
    /// application (SIGTERM, a grace period, SIGKILL), syncs and powers
    /// off; another guest does what its OS does on the power key (systemd
    /// powers off; a guest without the `button` driver does nothing, so
    /// pair this with a deadline and [`Stopper::stop`]).
    pub fn shutdown(&self) {
        let _ = self.power_button.write(1);
    }

    /// Stops the VM now: vCPUs leave KVM_RUN, devices are torn down, and
    /// [`VmHandle::wait`] returns [`ExitReason::Stopped`] (unless the guest
    /// stopped first). The guest gets no notice. Idempotent.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.wake.write(1);
    }
}

impl VmHandle {
    /// See [`Stopper::stop`].
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// See [`Stopper::shutdown`].
    pub fn shutdown(&self) {
        self.stopper.shutdown();
    }

    /// A [`Stopper`] for another thread (a signal watcher, a control
    /// socket) while this one waits.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Whether the VM has stopped ([`VmHandle::wait`] will not block).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Time since [`Vm::start`].
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// What the VM was built with.
    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// Runs a further command in the running VM through its guest agent
    /// ([`crate::agent::exec`] on the vsock device's socket and
    /// [`EXEC_PORT`](crate::agent::EXEC_PORT)), with its own stdio; blocks
    /// until it ends and returns how. The guest must run an agent there:
    /// the default guest does once booted when its command line has
    /// `vmapp.exec=1025`. Usable from any thread, also while another waits.
    pub fn exec(
        &self,
        run: &crate::agent::Run,
        stdin: Option<Box<dyn std::io::Read + Send>>,
        stdout: impl std::io::Write,
        stderr: impl std::io::Write,
    ) -> Result<crate::agent::Exit, crate::agent::AgentError> {
        let uds = self.agent_socket()?;
        crate::agent::exec(uds, crate::agent::EXEC_PORT, run, stdin, stdout, stderr)
    }

    /// The vsock device's socket, where the guest's agent is reached.
    fn agent_socket(&self) -> Result<&std::path::Path, crate::agent::AgentError> {
        self.info
            .vsock
            .as_deref()
            .ok_or(crate::agent::AgentError::NoVsock)
    }

    /// [`exec`](Self::exec) without stdin, once the guest's agent listens:
    /// tried again every half second for at most `within` while it does not
    /// yet (the guest may still be booting).
    pub fn exec_when_ready(
        &self,
        run: &crate::agent::Run,
        within: std::time::Duration,
        stdout: impl std::io::Write,
        stderr: impl std::io::Write,
    ) -> Result<crate::agent::Exit, crate::agent::AgentError> {
        let uds = self.agent_socket()?;
        let port = crate::agent::EXEC_PORT;
        crate::agent::exec_when_ready(uds, port, run, within, stdout, stderr)
    }

    /// Turns the network ([`VmBuilder::network`]) on or off. Off stops
    /// passt and returns once it has ended: the guest's connections fail
    /// and nothing more leaves. On starts it again; the guest reconnects.
    pub fn set_network(&self, on: bool) -> Result<(), crate::net::NetError> {
        let n = self
            .network
            .as_ref()
            .ok_or(crate::net::NetError::NoNetwork)?;
        n.lock().unwrap_or_else(|p| p.into_inner()).set(on)
    }

    /// Whether the VM has a network that is on (`None`: it has none).
    pub fn network_on(&self) -> Option<bool> {
        let n = self.network.as_ref()?;
        Some(n.lock().unwrap_or_else(|p| p.into_inner()).is_on())
    }

    /// Waits until the VM has stopped and its threads are gone; returns why.
    /// Its network (passt) stops too.
    pub fn wait(self) -> Result<VmExit, VmError> {
        let r = self
            .thread
            .join()
            .unwrap_or_else(|_| Err(VmError::Config("the VMM thread panicked".into())));
        drop(self.network);
        r
    }
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::VmIoctl { what, source }
}

/// Refuses a configuration that cannot run, before anything is created.
fn check_config(cfg: &VmBuilder) -> Result<usize, VmError> {
    if cfg.vcpus == 0 || cfg.vcpus > 254 {
        return Err(VmError::Config(format!(
            "invalid vCPU count {}: must be 1 to 254",
            cfg.vcpus
        )));
    }
    let slots_n = cfg.devices.len().max(cfg.empty_slots);
    if slots_n > MAX_VIRTIO_SLOTS {
        return Err(VmError::Config(format!(
            "{slots_n} virtio-mmio slots requested; at most {MAX_VIRTIO_SLOTS}"
        )));
    }
    boot::check_kernel(&cfg.kernel)?;
    if cfg.mem_mib < 32 {
        return Err(MemoryError::TooSmall(cfg.mem_mib).into());
    }
    if let Some(host) = memory::host_mem_mib().filter(|h| cfg.mem_mib > *h) {
        return Err(MemoryError::MoreThanHost {
            requested: cfg.mem_mib,
            host,
        }
        .into());
    }
    Ok(slots_n)
}

/// The VM with its interrupt controller, PIT and RAM.
fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(ioctl("KVM_CREATE_PIT2"))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the Vm
        // keeps for as long as the VM fd exists.
        unsafe { vm.set_user_memory_region(r) }.map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(vm)
}

/// Loads the kernel and initramfs and writes the ACPI tables and boot
/// information for `slots`.
fn load_guest(
    cfg: &VmBuilder,
    mem: &GuestMemoryMmap,
    initrd_data: Option<Vec<u8>>,
    slots: &[MmioSlot],
) -> Result<boot::LoadedKernel, VmError> {
    let kernel = boot::load_kernel(mem, &cfg.kernel)?;
    let initrd = match &initrd_data {
        Some(d) => Some(boot::place_initrd(mem, d, &kernel)?),
        None => None,
    };
    drop(initrd_data);
    let rsdp = acpi::write_tables(mem, cfg.vcpus, slots)?;
    boot::write_reset_stub(mem)?;
    let mut cmdline = cfg.cmdline.clone();
    let devs = virtio_mmio_cmdline(&slots[..cfg.devices.len()]);
    if !devs.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&devs);
    }
    let map = memory::memory_map(cfg.mem_mib << 20);
    boot::write_boot_info(mem, &kernel, &cmdline, initrd, &map, rsdp)?;
    Ok(kernel)
}

/// The legacy port-I/O devices: serial, i8042 reset, boot status, pvpanic,
/// ACPI PM.
struct PortIo {
    bus: Bus,
    serial: Arc<Mutex<Serial>>,
    boot_status: Arc<Mutex<BootStatusState>>,
    power_button: EventFd,
}

fn port_io(vm: &VmFd, cfg: &mut VmBuilder, guest_stop: &Arc<GuestStop>) -> Result<PortIo, VmError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(ioctl("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, cfg.console.writer()?)));
    let power_button = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&power_button, GED_IRQ)
        .map_err(ioctl("KVM_IRQFD"))?;
    let (boot_port, boot_status) = BootStatus::new(cfg.start);
    let mut bus = Bus::new();
    bus.insert(serial.clone(), SERIAL_PORT.into(), 8)?;
    bus.insert(
        Arc::new(Mutex::new(I8042Reset::new(guest_stop.clone()))),
        I8042_PORT.into(),
        1,
    )?;
    bus.insert(
        Arc::new(Mutex::new(boot_port)),
        BOOT_STATUS_PORT.into(),
        BOOT_STATUS_LEN,
    )?;
    bus.insert(
        Arc::new(Mutex::new(PvPanic::new(guest_stop.clone()))),
        PVPANIC_PORT.into(),
        1,
    )?;
    bus.insert(
        Arc::new(Mutex::new(AcpiPm::new(guest_stop.clone()))),
        ACPI_PM_PORT.into(),
        ACPI_PM_LEN,
    )?;
    Ok(PortIo {
        bus,
        serial,
        boot_status,
        power_button,
    })
}

/// Places the devices' shared-memory windows (virtio-gpu's host-visible
/// region) above RAM, each filled with one KVM slot per mapping.
fn place_shm_windows(kvm: &Kvm, vm: &Arc<VmFd>, mem: &GuestMemoryMmap, cfg: &mut VmBuilder) {
    let ram_slots = mem.iter().count() as u32;
    let free = (kvm.get_nr_memslots() as u32).saturating_sub(ram_slots) as usize;
    let mapper: Arc<dyn GuestMapper> = Arc::new(KvmMapper {
        vm: vm.clone(),
        first: ram_slots,
        slots: Mutex::new(vec![false; free]),
    });
    let mut shm_next = shm_windows_base(cfg.mem_mib);
    for d in cfg.devices.iter_mut() {
        let size = d.shm_size();
        if size > 0 {
            d.place_shm(shm_next, mapper.clone());
            shm_next = (shm_next + size).div_ceil(1 << 30) << 30;
        }
    }
}

/// The virtio-mmio bus: each device (then empty slots) behind its
/// transport, with its irqfd and queue-notify ioeventfds.
fn mmio_bus(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
    slots: &[MmioSlot],
) -> Result<Bus, VmError> {
    let mut mmio = Bus::new();
    let mut devices = devices.into_iter();
    for s in slots {
        let dev: Box<dyn VirtioDevice> = devices.next().unwrap_or_else(|| Box::new(EmptySlot));
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_irqfd(&irq, s.irq).map_err(ioctl("KVM_IRQFD"))?;
        let t = MmioTransport::new(dev, mem.clone(), irq)?;
        for (idx, evt) in t.queue_notify_eventfds() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(s.base + reg::QUEUE_NOTIFY), idx)
                .map_err(ioctl("KVM_IOEVENTFD"))?;
        }
        mmio.insert(Arc::new(Mutex::new(t)), s.base, s.size)?;
    }
    Ok(mmio)
}

impl Vm {
    fn new(mut cfg: VmBuilder) -> Result<Self, VmError> {
        let slots_n = check_config(&cfg)?;
        let initrd_data = match (cfg.initrd_data.take(), &cfg.initramfs) {
            (Some(d), _) => Some(d),
            (None, Some(p)) => Some(boot::read_initrd(p)?),
            (None, None) => None,
        };
        let kvm = kvm_check::open()?;
        let max = kvm.get_max_vcpus();
        if usize::from(cfg.vcpus) > max {
            return Err(VmError::Config(format!(
                "{} vCPUs requested; this KVM allows {max}",
                cfg.vcpus
            )));
        }
        let mem = memory::create(cfg.mem_mib)?;
        let vm = Arc::new(create_vm(&kvm, &mem)?);
        let slots: Vec<MmioSlot> = (0..slots_n)
            .map(|i| MmioSlot {
                base: VIRTIO_MMIO_BASE + i as u64 * MMIO_SIZE,
                size: MMIO_SIZE,
                irq: VIRTIO_IRQ_BASE + i as u32,
            })
            .collect();
        let kernel = load_guest(&cfg, &mem, initrd_data, &slots)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let guest_stop = GuestStop::new(wake.try_clone()?);
        let stdin_input = matches!(cfg.console, Console::Stdio);
        let pio = port_io(&vm, &mut cfg, &guest_stop)?;
        place_shm_windows(&kvm, &vm, &mem, &mut cfg);
        let mmio = mmio_bus(&vm, &mem, std::mem::take(&mut cfg.devices), &slots)?;
        let mut vcpus = Vec::new();
        for id in 0..cfg.vcpus {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(ioctl("KVM_CREATE_VCPU"))?;
            cpu::configure(&kvm, &vcpu, &mem, id, cfg.vcpus, kernel.entry)?;
            vcpus.push(vcpu);
        }
        Ok(Self {
            vm,
            mem,
            vcpus,
            pio: pio.bus,
            mmio,
            serial: pio.serial,
            stdin_input,
            guest_stop,
            wake,
            boot_status: pio.boot_status,
            seccomp: cfg.seccomp,
            host_stop: Arc::new(AtomicBool::new(false)),
            power_button: Arc::new(pio.power_button),
            info: VmInfo::default(),
            network: None,
        })
    }

    /// Runs the guest until it powers off, reboots, panics or faults, on the
    /// `vmm` thread; the caller's thread only waits ([`Vm::start`]).
    pub fn run(self) -> Result<VmExit, VmError> {
        self.start()?.wait()
    }

    /// Starts the guest on a thread of its own (`vmm`, under its seccomp
    /// filter) and returns a handle to stop it and wait for it.
    ///
    /// Process-wide effects: a handler that does nothing is installed for
    /// `SIGRTMIN` (the signal that kicks vCPU threads out of KVM_RUN; it
    /// replaces any other handler of that signal), and with
    /// [`Console::Stdio`] and a terminal on stdin, the terminal is in raw
    /// mode while the VM runs. Nothing else of the caller's is changed.
    pub fn start(mut self) -> Result<VmHandle, VmError> {
        let mut network = self.network.take();
        if let Some(n) = network.as_mut() {
            n.set(true)?;
        }
        let stopper = Stopper {
            flag: self.host_stop.clone(),
            wake: Arc::new(self.wake.try_clone()?),
            power_button: self.power_button.clone(),
        };
        let info = self.info.clone();
        let thread = std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || self.run_here())?;
        Ok(VmHandle {
            thread,
            stopper,
            started: Instant::now(),
            info,
            network: network.map(Mutex::new),
        })
    }

    /// The event loop, on the `vmm` thread.
    fn run_here(self) -> Result<VmExit, VmError> {
        let Vm {
            vm,
            mem,
            vcpus,
            pio,
            mmio,
            serial,
            stdin_input,
            guest_stop,
            wake,
            boot_status,
            seccomp,
            host_stop,
            power_button: _,
            info: _,
            network: _,
        } = self;
        extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        let kick_sig = SIGRTMIN();
        register_signal_handler(kick_sig, kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<VcpuStop, CpuError>>();
        let threads = spawn_vcpus(vcpus, &pio, &mmio, &stop, &tx, &wake, seccomp)?;
        drop(tx);

        let raw = if stdin_input {
            RawTerminal::enter()
        } else {
            None
        };
        let input = if stdin_input {
            Some(console::spawn_stdin_forwarder(
                serial,
                stop.clone(),
                seccomp,
            )?)
        } else {
            None
        };
        // Every thread this one needs exists: from here on it only waits,
        // stops vCPUs and tears the VM down.
        seccomp_policies::install(ThreadKind::Vmm, seccomp)?;

        let result = wait_for_stop(&wake, &guest_stop, &host_stop, &rx);

        stop_vcpus(threads, &stop, kick_sig);
        if let Some(t) = input {
            let _ = t.join();
        }
        drop(raw);
        drop(vm);
        drop(mem);
        let st = *devices::bus::lock(&boot_status);
        result.map(|reason| VmExit {
            reason,
            app_exit_status: st.exit_status,
            boot_time: st.boot_time,
        })
    }
}

/// Starts one thread per vCPU, each under its seccomp filter before the
/// first guest instruction; each reports how it stopped on `tx` and wakes
/// the main thread.
fn spawn_vcpus(
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    pio: &Bus,
    mmio: &Bus,
    stop: &Arc<AtomicBool>,
    tx: &mpsc::Sender<Result<VcpuStop, CpuError>>,
    wake: &EventFd,
    seccomp: Mode,
) -> Result<Vec<std::thread::JoinHandle<()>>, VmError> {
    let mut threads = Vec::new();
    for (id, mut vcpu) in vcpus.into_iter().enumerate() {
        let (pio, mmio, stop, tx) = (pio.clone(), mmio.clone(), stop.clone(), tx.clone());
        let wake = wake.try_clone()?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let r = seccomp_policies::install(ThreadKind::Vcpu, seccomp)
                        .map_err(CpuError::from)
                        .and_then(|()| cpu::run_loop(id as u8, &mut vcpu, &pio, &mmio, &stop));
                    let _ = tx.send(r);
                    let _ = wake.write(1);
                })?,
        );
    }
    Ok(threads)
}

/// Waits until the guest stops (a platform register), the host stops it
/// ([`Stopper::stop`]) or a vCPU does.
fn wait_for_stop(
    wake: &EventFd,
    guest_stop: &GuestStop,
    host_stop: &AtomicBool,
    rx: &mpsc::Receiver<Result<VcpuStop, CpuError>>,
) -> Result<ExitReason, VmError> {
    loop {
        // Block until something happens (the fd is non-blocking: poll).
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(wake),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd array of length 1.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        let _ = wake.read();
        if let Some(reason) = guest_stop.reason() {
            break Ok(match reason {
                StopReason::PowerOff => ExitReason::PowerOff,
                StopReason::Reset => ExitReason::Reset,
                StopReason::Panic => ExitReason::Panic,
            });
        }
        if host_stop.load(Ordering::Acquire) {
            break Ok(ExitReason::Stopped);
        }
        match rx.try_recv() {
            Ok(Ok(VcpuStop::TripleFault)) => break Ok(ExitReason::TripleFault),
            Ok(Ok(VcpuStop::SystemEvent(kind))) => {
                break Ok(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => ExitReason::Panic,
                    _ => ExitReason::PowerOff,
                })
            }
            Ok(Ok(VcpuStop::Kicked)) | Err(mpsc::TryRecvError::Empty) => continue,
            Ok(Err(e)) => break Err(VmError::Cpu(e)),
            Err(mpsc::TryRecvError::Disconnected) => {
                break Err(VmError::Config("all vCPU threads ended".into()))
            }
        }
    }
}

/// Stops every vCPU: sets the flag, then signals until each thread is out
/// of KVM_RUN (a signal that lands before KVM_RUN is retried), and joins
/// them.
fn stop_vcpus(threads: Vec<std::thread::JoinHandle<()>>, stop: &AtomicBool, kick_sig: i32) {
    stop.store(true, Ordering::Release);
    use std::os::unix::thread::JoinHandleExt;
    while threads.iter().any(|t| !t.is_finished()) {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            // SAFETY: the pthread is alive (not finished, not joined).
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_sig) };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        let _ = t.join();
    }
}
