use super::*;
use vm_memory::GuestMemoryMmap;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Reads the table at `addr`, checks its signature and checksum.
fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let hdr = read(mem, addr, 36);
    assert_eq!(&hdr[..4], sig);
    let t = read(mem, addr, u32_at(&hdr, 4) as usize);
    assert_eq!(sum(&t), 0, "checksum of {}", String::from_utf8_lossy(sig));
    t
}

fn slots(n: usize) -> Vec<MmioSlot> {
    (0..n)
        .map(|i| MmioSlot {
            base: VIRTIO_MMIO_BASE + i as u64 * 0x1000,
            size: 0x1000,
            irq: VIRTIO_IRQ_BASE + i as u32,
        })
        .collect()
}

struct Tables {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

fn walk(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> Tables {
    let r = read(mem, rsdp.0, 36);
    assert_eq!(&r[..8], b"RSD PTR ");
    assert_eq!(sum(&r[..20]), 0);
    assert_eq!(sum(&r), 0);
    assert_eq!(r[15], 2, "revision 2 (XSDT)");
    let xsdt = table(mem, u64_at(&r, 24), b"XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(&xsdt, o))
        .collect();
    assert_eq!(entries.len(), 2);
    let fadt = table(mem, entries[0], b"FACP");
    let madt = table(mem, entries[1], b"APIC");
    // X_DSDT at offset 140.
    let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
    Tables { fadt, madt, dsdt }
}

#[test]
fn tables_chain_and_checksums() {
    let m = mem();
    let rsdp = write_tables(&m, 2, &slots(3)).unwrap();
    assert_eq!(rsdp.0, ACPI_START);
    let t = walk(&m, rsdp);
    // Hardware-reduced, reset register supported.
    let flags = u32_at(&t.fadt, 112);
    assert_ne!(flags & (1 << 20), 0);
    assert_ne!(flags & (1 << 10), 0);
    // Reset register: system I/O at ACPI_PM_PORT + 2, value 1.
    assert_eq!(t.fadt[116], 1);
    assert_eq!(u64_at(&t.fadt, 120), u64::from(ACPI_PM_PORT + 2));
    assert_eq!(t.fadt[128], ACPI_RESET_VALUE);
    // Sleep control / status registers (offsets 244 and 256).
    assert_eq!(t.fadt[244], 1);
    assert_eq!(u64_at(&t.fadt, 248), u64::from(ACPI_PM_PORT));
    assert_eq!(u64_at(&t.fadt, 260), u64::from(ACPI_PM_PORT + 1));
    let _ = t.dsdt;
}

#[test]
fn madt_lists_every_cpu_and_the_ioapic() {
    let m = mem();
    let t = walk(&m, write_tables(&m, 4, &[]).unwrap());
    assert_eq!(u32_at(&t.madt, 36), LAPIC_ADDR);
    let mut off = 44;
    let mut apic_ids = Vec::new();
    let mut ioapics = Vec::new();
    while off < t.madt.len() {
        let (ty, len) = (t.madt[off], t.madt[off + 1] as usize);
        match ty {
            0 => {
                assert_eq!(u32_at(&t.madt, off + 4) & 1, 1, "enabled");
                apic_ids.push(t.madt[off + 3]);
            }
            1 => ioapics.push(u32_at(&t.madt, off + 4)),
            _ => panic!("unexpected MADT entry {ty}"),
        }
        assert!(len > 0);
        off += len;
    }
    assert_eq!(apic_ids, vec![0, 1, 2, 3]);
    assert_eq!(ioapics, vec![IOAPIC_ADDR]);
}

#[test]
fn dsdt_has_one_lnro0005_per_slot_and_s5() {
    for n in [0usize, 1, 8] {
        let aml = dsdt_aml(&slots(n));
        let count = aml.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, n);
        assert_eq!(aml.windows(4).filter(|w| w == b"_S5_").count(), 1);
        assert_eq!(aml.windows(8).filter(|w| w == b"QEMU0001").count(), 1);
    }
}

#[test]
fn bad_cpu_counts_are_errors() {
    let m = mem();
    assert!(matches!(
        write_tables(&m, 0, &[]),
        Err(AcpiError::TooManyCpus(0))
    ));
    assert!(matches!(
        write_tables(&m, 255, &[]),
        Err(AcpiError::TooManyCpus(255))
    ));
}

/// Decompiles the DSDT with ACPICA's `iasl` (Debian `acpica-tools`) and checks
/// what a kernel will see.
#[test]
fn dsdt_decompiles_with_iasl() {
    let m = mem();
    let t = walk(&m, write_tables(&m, 1, &slots(2)).unwrap());
    let dir = std::env::temp_dir().join(format!("vmm-acpi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("dsdt.dat");
    std::fs::write(&bin, &t.dsdt).unwrap();
    let out = std::process::Command::new("iasl")
        .arg("-d")
        .arg(&bin)
        .current_dir(&dir)
        .output()
        .expect("iasl is required for this test: apt-get install acpica-tools");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(dsl.matches("Name (_HID, \"LNRO0005\")").count(), 2, "{dsl}");
    assert!(dsl.contains("0xD0000000"), "{dsl}");
    assert!(dsl.contains("0xD0001000"), "{dsl}");
    assert!(dsl.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"));
    assert!(dsl.contains("0x00000006"), "irq of slot 1: {dsl}");
    assert!(dsl.contains("Name (_S5, Package (0x04)"), "{dsl}");
    assert!(dsl.contains("EisaId (\"PNP0501\")"), "{dsl}");
    assert!(
        dsl.contains("0x03F8,             // Range Minimum"),
        "{dsl}"
    );
    // The power button and the Generic Event Device that notifies it.
    assert!(dsl.contains("EisaId (\"PNP0C0C\")"), "{dsl}");
    assert!(
        dsl.contains("Name (_HID, \"ACPI0013\" /* Generic Event Device */)"),
        "{dsl}"
    );
    assert!(dsl.contains("0x00000017"), "GED's irq 23: {dsl}");
    assert!(dsl.contains("Method (_EVT, 1, Serialized)"), "{dsl}");
    assert!(dsl.contains("Notify (\\_SB.PWRB, 0x80)"), "{dsl}");
}
