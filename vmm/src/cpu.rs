//! vCPU setup (CPUID, MSRs, registers, LAPIC) and the vCPU thread's run loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use devices::bus::Bus;
use devices::warn_limited;

use crate::boot::EntryPoint;
use crate::layout::*;

/// Errors setting up or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The vCPU thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp_policies::SeccompError),
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: {what}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// Which step.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Not every MSR was accepted.
    #[error("vCPU {0}: KVM accepted only some boot MSRs")]
    Msrs(u8),
    /// Writing page tables or the GDT failed.
    #[error("cannot write boot page tables or GDT")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// KVM could not enter the guest.
    #[error("vCPU {id}: KVM failed to enter the guest (hardware reason {reason:#x})")]
    FailEntry {
        /// vCPU index.
        id: u8,
        /// hardware_entry_failure_reason.
        reason: u64,
    },
    /// KVM reported an internal error (e.g. an instruction it cannot emulate).
    #[error("vCPU {0}: KVM internal error (this KVM cannot run this guest)")]
    Internal(u8),
    /// An exit the VMM does not handle.
    #[error("vCPU {id}: unexpected exit {exit}")]
    UnexpectedExit {
        /// vCPU index.
        id: u8,
        /// The exit, as text.
        exit: String,
    },
}

fn kvm_err(id: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { id, what, source }
}

/// The CPUID the guest sees: KVM's supported set with this vCPU's APIC id and
/// a topology of `count` single-threaded cores in one package.
pub fn cpuid_for(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let shift = u32::BITS - u32::from(count.saturating_sub(1)).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical CPU
                }
            }
            4 => {
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(count - 1) << 26);
            }
            0xb | 0x1f => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = u32::from(count);
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            0x8000_0001 if count > 1 => e.ecx |= 1 << 1, // CmpLegacy
            0x8000_0008 => e.ecx = (e.ecx & !0xff) | u32::from(count - 1),
            0x8000_001e => {
                e.eax = u32::from(id);
                e.ebx = (e.ebx & !0xff) | u32::from(id);
                e.ecx &= !0xff;
            }
            _ => {}
        }
    }
    cpuid
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, 1), // fast string operations
        // MTRRs enabled with write-back as the default memory type: without
        // it the guest runs with uncached memory.
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// GDT entry from flags, base and limit (Intel SDM vol. 3 §3.4.5).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0xffff)
}

/// The KVM segment register for GDT entry `index`.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Configures vCPU `id` of `count` for booting at `entry`.
pub fn configure(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    id: u8,
    count: u8,
    entry: EntryPoint,
) -> Result<(), CpuError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err(id, "KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid_for(&supported, id, count))
        .map_err(kvm_err(id, "KVM_SET_CPUID2"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Msrs(id))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm_err(id, "KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(CpuError::Msrs(id));
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err(id, "KVM_SET_FPU"))?;

    // LINT0 = ExtINT, LINT1 = NMI, as firmware leaves them.
    let mut lapic = vcpu.get_lapic().map_err(kvm_err(id, "KVM_GET_LAPIC"))?;
    for (off, mode) in [(0x350usize, 7u32), (0x360, 4)] {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *x as i8;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(kvm_err(id, "KVM_SET_LAPIC"))?;

    if id != 0 {
        // Application processors wait for INIT/SIPI from the boot CPU.
        return Ok(());
    }
    let mut sregs = vcpu.get_sregs().map_err(kvm_err(id, "KVM_GET_SREGS"))?;
    let (gdt, rip, regs_fn): (Vec<u64>, u64, fn(&mut kvm_regs)) = match entry {
        EntryPoint::Pvh(a) => (
            vec![
                0,
                gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code
                gdt_entry(0xc093, 0, 0xfffff), // data
                gdt_entry(0x008b, 0, 0x67),    // TSS
            ],
            a.0,
            |r| r.rbx = PVH_INFO_ADDR,
        ),
        EntryPoint::Linux64(a) => (
            vec![
                0,
                gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
                gdt_entry(0xc093, 0, 0xfffff), // data
                gdt_entry(0x808b, 0, 0xfffff), // TSS
            ],
            a.0,
            |r| {
                r.rsp = BOOT_STACK_ADDR;
                r.rbp = BOOT_STACK_ADDR;
                r.rsi = ZERO_PAGE_ADDR;
            },
        ),
    };
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    match entry {
        EntryPoint::Pvh(_) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryPoint::Linux64(_) => {
            // Identity-map the first GiB with 2 MiB pages.
            mem.write_obj(PDPTE_ADDR | 0x03, GuestAddress(PML4_ADDR))?;
            mem.write_obj(PDE_ADDR | 0x03, GuestAddress(PDPTE_ADDR))?;
            for i in 0..512u64 {
                mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_ADDR + i * 8))?;
            }
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err(id, "KVM_SET_SREGS"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip,
        ..Default::default()
    };
    regs_fn(&mut regs);
    vcpu.set_regs(&regs).map_err(kvm_err(id, "KVM_SET_REGS"))?;
    Ok(())
}

/// Why a vCPU thread stopped without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The VMM asked it to stop.
    Kicked,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM reported a system event (shutdown or reset).
    SystemEvent(u32),
}

/// Runs `vcpu` until the guest stops it, an error, or `stop` is set (the VMM
/// then kicks the thread out of KVM_RUN with a signal).
pub fn run_loop(
    id: u8,
    vcpu: &mut VcpuFd,
    pio: &Bus,
    mmio: &Bus,
    stop: &AtomicBool,
) -> Result<VcpuStop, CpuError> {
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(VcpuStop::Kicked);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    warn_limited!(vcpu = id, addr, "read of unmapped MMIO");
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !mmio.write(addr, data) {
                    warn_limited!(vcpu = id, addr, "write to unmapped MMIO");
                }
            }
            Ok(VcpuExit::Shutdown) => return Ok(VcpuStop::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => return Ok(VcpuStop::SystemEvent(kind)),
            Ok(VcpuExit::FailEntry(reason, _)) => return Err(CpuError::FailEntry { id, reason }),
            Ok(VcpuExit::InternalError) => return Err(CpuError::Internal(id)),
            Ok(VcpuExit::Hlt) => {
                // With the in-kernel LAPIC, HLT is handled by KVM; treat a
                // stray one as a request to look at the stop flag.
                continue;
            }
            Ok(other) => {
                return Err(CpuError::UnexpectedExit {
                    id,
                    exit: format!("{other:?}"),
                })
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Err(source) => {
                return Err(CpuError::Kvm {
                    id,
                    what: "KVM_RUN",
                    source,
                })
            }
        }
    }
}

/// Shares a flag between the VMM and a vCPU thread.
pub type StopFlag = Arc<AtomicBool>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code64.base, code64.limit, code64.selector),
            (0, 0xffff_ffff, 8)
        );
        assert_eq!(
            (code64.l, code64.db, code64.g, code64.present),
            (1, 0, 1, 1)
        );
        assert_eq!(code64.type_, 0xb);
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.type_, data.s, data.selector), (3, 1, 16));
        let tss = segment(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!((tss.limit, tss.g, tss.s), (0x67, 0, 0));
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
        let based = segment(gdt_entry(0xc093, 0x1234_5678, 0xfffff), 2);
        assert_eq!(based.base, 0x1234_5678);
    }

    #[test]
    fn cpuid_topology() {
        let mut entries = vec![
            kvm_bindings::kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ecx: 0xffff_ffff,
                ..Default::default()
            },
        ];
        entries[0].ecx = 0;
        let supported = CpuId::from_entries(&entries).unwrap();
        let c = cpuid_for(&supported, 2, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0xffff);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_ne!(e[0].edx & (1 << 28), 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].edx), (2, 4, 2));
        assert_eq!(e[2].ecx & 0xff, 3);
        assert_eq!(e[2].ecx & !0xff, 0xffff_ff00);
        let single = cpuid_for(&supported, 0, 1);
        assert_eq!(single.as_slice()[0].edx & (1 << 28), 0);
        assert_eq!(single.as_slice()[1].eax, 0);
    }
}
