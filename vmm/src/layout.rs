//! The x86_64 guest physical and port-I/O layout.

/// GDT used by the boot vCPU.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// Linux boot protocol `boot_params` ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack of the boot vCPU.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry: PML4, PDPT, PD.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_ADDR: u64 = 0xa000;
/// Page directory (512 × 2 MiB = the first GiB).
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line accepted (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional low memory (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, where the kernel also scans for it).
pub const ACPI_START: u64 = 0xe0000;
/// The real-mode reset vector (F000:FFF0) a guest jumps to for a BIOS reboot.
pub const RESET_VECTOR: u64 = 0xffff0;
/// First byte of high memory; bzImage kernels load here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (RAM stops here and resumes at 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio slot; slot `i` is at `VIRTIO_MMIO_BASE + i * 0x1000`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 command/status port (reset pulse only).
pub const I8042_PORT: u16 = 0x64;
/// Boot-status port: +0 boot timer, +1 application exit status.
pub const BOOT_STATUS_PORT: u16 = 0x440;
/// pvpanic (ACPI QEMU0001).
pub const PVPANIC_PORT: u16 = 0x505;
/// ACPI sleep control (+0), sleep status (+1), reset (+2).
pub const ACPI_PM_PORT: u16 = 0x600;
/// IRQ of virtio-mmio slot 0; slot `i` uses `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Most virtio-mmio slots (IOAPIC pins 5..=22).
pub const MAX_VIRTIO_SLOTS: usize = 18;
/// The ACPI Generic Event Device's IOAPIC pin: the power button.
pub const GED_IRQ: u32 = 23;
