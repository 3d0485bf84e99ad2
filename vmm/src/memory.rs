//! Guest RAM: creation, the memory map given to the kernel, host checks.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Too little memory for the kernel to boot.
    #[error("guest memory of {0} MiB is too small (at least 32 MiB)")]
    TooSmall(u64),
    /// More memory than the host has.
    #[error("guest memory of {requested} MiB is more than the host's {host} MiB")]
    MoreThanHost {
        /// Requested MiB.
        requested: u64,
        /// Host MemTotal in MiB.
        host: u64,
    },
    /// mmap failed.
    #[error("cannot allocate guest memory")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
}

/// One region of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// E820 type: 1 RAM, 2 reserved.
    pub kind: u32,
}

/// E820 RAM.
pub const E820_RAM: u32 = 1;
/// E820 reserved.
pub const E820_RESERVED: u32 = 2;

/// The RAM ranges for `mem_bytes` of guest memory, split around the MMIO hole.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let mut v = vec![(GuestAddress(0), low as usize)];
    if mem_bytes > MMIO_GAP_START {
        v.push((
            GuestAddress(MMIO_GAP_END),
            (mem_bytes - MMIO_GAP_START) as usize,
        ));
    }
    v
}

/// The memory map (e820 / PVH memmap) for `mem_bytes` of RAM.
pub fn memory_map(mem_bytes: u64) -> Vec<MapEntry> {
    let low_end = mem_bytes.min(MMIO_GAP_START);
    let mut v = vec![
        MapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    // Below 1 MiB of RAM there is no high memory (found by the acpi fuzz target).
    if low_end > HIMEM_START {
        v.push(MapEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_bytes > MMIO_GAP_START {
        v.push(MapEntry {
            addr: MMIO_GAP_END,
            size: mem_bytes - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    v
}

/// The host's MemTotal in MiB, if /proc/meminfo says.
pub fn host_mem_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Allocates `mem_mib` MiB of guest RAM after checking it against the host.
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if mem_mib < 32 {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    if let Some(host) = host_mem_mib() {
        if mem_mib > host {
            return Err(MemoryError::MoreThanHost {
                requested: mem_mib,
                host,
            });
        }
    }
    let bytes = mem_mib
        .checked_mul(1 << 20)
        .ok_or(MemoryError::MoreThanHost {
            requested: mem_mib,
            host: 0,
        })?;
    Ok(GuestMemoryMmap::from_ranges(&ram_ranges(bytes))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_below_the_hole() {
        let r = ram_ranges(256 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
        let m = memory_map(256 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].addr + m[2].size, 256 << 20);
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (256 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let mem = 4u64 << 30;
        let r = ram_ranges(mem);
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1usize << 30)));
        let m = memory_map(mem);
        assert_eq!(m[2].addr + m[2].size, MMIO_GAP_START);
        assert_eq!(m[3].addr, MMIO_GAP_END);
        // No RAM entry overlaps the virtio-mmio slots or the APICs.
        for e in m.iter().filter(|e| e.kind == E820_RAM) {
            assert!(e.addr + e.size <= VIRTIO_MMIO_BASE || e.addr >= MMIO_GAP_END);
        }
    }

    #[test]
    fn maps_of_less_than_a_mib_do_not_underflow() {
        // Regression: the acpi fuzz target found `low_end - HIMEM_START` underflowing.
        for bytes in [0, 4096, HIMEM_START - 1, HIMEM_START] {
            let m = memory_map(bytes);
            assert!(m.iter().all(|e| e.size > 0), "{bytes}: {m:?}");
            assert_eq!(m.len(), 2, "{bytes}");
        }
        assert_eq!(memory_map(HIMEM_START + 4096).len(), 3);
    }

    #[test]
    fn refuses_tiny_and_huge() {
        assert!(matches!(create(1), Err(MemoryError::TooSmall(1))));
        assert!(matches!(
            create(u64::MAX / 2),
            Err(MemoryError::MoreThanHost { .. })
        ));
    }
}
