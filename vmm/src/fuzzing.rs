//! Entry point of the `acpi` fuzz target (`fuzz/`), shared with the test that
//! replays its corpus: ACPI tables, the DSDT and the guest memory map built
//! from fuzzed configurations (vCPU count, memory size, virtio-mmio slots).

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::acpi::{self, MmioSlot};
use crate::memory;

/// Input: `cpus: u8`, `mem: u32 le` (MiB), then 20-byte slot records
/// (`base: u64`, `size: u64`, `irq: u32`, all le), at most 64. Returns
/// whether the tables were written.
pub fn acpi_config(data: &[u8]) -> bool {
    let [cpus, m0, m1, m2, m3, rest @ ..] = data else {
        return false;
    };
    let mem_bytes = u64::from(u32::from_le_bytes([*m0, *m1, *m2, *m3])) << 20;
    // The map is pure arithmetic over the size: any size must work.
    let map = memory::memory_map(mem_bytes);
    let ranges = memory::ram_ranges(mem_bytes);
    debug_assert!(map.len() < 16 && ranges.len() < 8);
    let slots: Vec<MmioSlot> = rest
        .chunks_exact(20)
        .take(64)
        .map(|c| MmioSlot {
            base: u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
            size: u64::from_le_bytes(c[8..16].try_into().unwrap_or_default()),
            irq: u32::from_le_bytes(c[16..20].try_into().unwrap_or_default()),
        })
        .collect();
    let _ = acpi::dsdt_aml(&slots);
    // Tables go below 1 MiB; 2 MiB of memory is enough to hold them.
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]) else {
        return false;
    };
    acpi::write_tables(&mem, *cpus, &slots).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_builds_tables_for_a_valid_config() {
        let mut d = vec![2u8];
        d.extend_from_slice(&512u32.to_le_bytes());
        for i in 0..4u64 {
            d.extend_from_slice(&(0xd000_0000 + i * 0x1000).to_le_bytes());
            d.extend_from_slice(&0x1000u64.to_le_bytes());
            d.extend_from_slice(&(5 + i as u32).to_le_bytes());
        }
        assert!(acpi_config(&d));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let slots = [MmioSlot {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        }];
        assert!(acpi::write_tables(&mem, 2, &slots).is_ok());
        assert!(acpi::write_tables(&mem, 0, &slots).is_err());
        // Extremes do not panic.
        acpi_config(&[255, 255, 255, 255, 255]);
        acpi_config(&[0, 0, 0, 0, 0]);
        let mut big = vec![1u8, 0, 0, 0, 1];
        big.extend(std::iter::repeat_n(0xffu8, 20 * 70));
        acpi_config(&big);
    }
}
