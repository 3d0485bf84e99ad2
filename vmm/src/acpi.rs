//! ACPI tables: RSDP → XSDT → {FADT (hardware-reduced) → DSDT, MADT}.
//!
//! The DSDT describes one `LNRO0005` virtio-mmio device per slot (distribution
//! kernels find virtio-mmio devices only this way), the pvpanic port, and the
//! `_S5_` sleep type used by the FADT's sleep control register for power-off.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::*;
use devices::legacy::{ACPI_RESET_VALUE, SLEEP_TYPE_S5};

const OEM_ID: [u8; 6] = *b"VMAPP ";
const OEM_TABLE: [u8; 8] = *b"VMAPPVM ";

/// Errors building or writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit between `ACPI_START` and high memory.
    #[error("ACPI tables do not fit below 1 MiB")]
    TooLarge,
    /// Guest memory write failed.
    #[error("cannot write ACPI tables to guest memory")]
    Write(#[from] vm_memory::GuestMemoryError),
    /// More vCPUs than the MADT can name.
    #[error("too many vCPUs for the MADT: {0}")]
    TooManyCpus(u8),
}

/// One virtio-mmio slot as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base address of the register window.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// IOAPIC pin.
    pub irq: u32,
}

/// The DSDT's AML body.
pub fn dsdt_aml(slots: &[MmioSlot]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        let mem32 = aml::Memory32Fixed::new(true, s.base as u32, s.size as u32);
        let irq = aml::Interrupt::new(true, true, false, false, s.irq);
        let crs = aml::ResourceTemplate::new(vec![&mem32, &irq]);
        let uid = i as u32;
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid = aml::Name::new("_UID".into(), &uid);
        let crs = aml::Name::new("_CRS".into(), &crs);
        let path = format!("_SB_.V{i:03X}");
        aml::Device::new(path.as_str().into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);
    }
    // COM1. Hardware-reduced ACPI has no legacy PIC, so ISA IRQs are not
    // identity-mapped: the UART's IRQ reaches the kernel only through here.
    let io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let irq = aml::Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &0u8);
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);

    let io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let crs = aml::ResourceTemplate::new(vec![&io]);
    let hid = aml::Name::new("_HID".into(), &"QEMU0001");
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml::Device::new("_SB_.PEVT".into(), vec![&hid, &crs]).to_aml_bytes(&mut body);
    power_button(&mut body);
    let zero = 0u8;
    let s5 = aml::Package::new(vec![&SLEEP_TYPE_S5, &SLEEP_TYPE_S5, &zero, &zero]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    body
}

/// The power button of a hardware-reduced machine: a control-method button
/// (`PNP0C0C`, Linux's `button` driver reports it as KEY_POWER) notified by
/// the Generic Event Device (`ACPI0013`, built into Linux) when its
/// interrupt [`GED_IRQ`] fires: `_EVT` has one event, so it does not read
/// anything back.
fn power_button(body: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let uid = aml::Name::new("_UID".into(), &0u8);
    aml::Device::new("_SB_.PWRB".into(), vec![&hid, &uid]).to_aml_bytes(body);
    let irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let crs = aml::Name::new("_CRS".into(), &crs);
    let button = aml::Path::new("\\_SB_.PWRB");
    let pressed = 0x80u8;
    let notify = aml::Notify::new(&button, &pressed);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&notify]);
    aml::Device::new("_SB_.GED0".into(), vec![&hid, &uid, &crs, &evt]).to_aml_bytes(body);
}

fn dsdt(slots: &[MmioSlot]) -> Sdt {
    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    t.append_slice(&dsdt_aml(slots));
    t
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    b.sleep_control_reg = io(ACPI_PM_PORT);
    b.sleep_status_reg = io(ACPI_PM_PORT + 1);
    b.reset_reg = io(ACPI_PM_PORT + 2);
    b.reset_value = ACPI_RESET_VALUE;
    // IA-PC boot architecture: VGA not present (bit 2), CMOS RTC not present
    // (bit 5); no 8042 (bit 1 clear), so the kernel does not probe one.
    b.iapc_boot_arch = ((1u16 << 2) | (1 << 5)).into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"VMAPPVMM").into();
    to_bytes(&b.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(cpus, IOAPIC_ADDR, 0));
    to_bytes(&m)
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Writes all tables at [`ACPI_START`]; returns the RSDP's address.
pub fn write_tables<M: GuestMemory>(
    mem: &M,
    cpus: u8,
    slots: &[MmioSlot],
) -> Result<GuestAddress, AcpiError> {
    if cpus == 0 || cpus > 254 {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let align = |a: u64| {
        a.checked_add(15)
            .map(|a| a & !15)
            .ok_or(AcpiError::TooLarge)
    };
    let rsdp_addr = ACPI_START;
    let mut next = align(rsdp_addr + Rsdp::len() as u64)?;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let at = next;
        let end = at
            .checked_add(bytes.len() as u64)
            .filter(|e| *e <= HIMEM_START)
            .ok_or(AcpiError::TooLarge)?;
        mem.write_slice(bytes, GuestAddress(at))?;
        next = align(end)?;
        Ok(at)
    };
    let dsdt_addr = place(dsdt(slots).as_slice())?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(cpus))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(&to_bytes(&xsdt))?;
    mem.write_slice(
        &to_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        GuestAddress(rsdp_addr),
    )?;
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests;
