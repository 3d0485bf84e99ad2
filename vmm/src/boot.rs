//! Loading the kernel and initramfs and writing the boot information for the
//! two x86_64 entry protocols: PVH (ELF `vmlinux` with a PVH note) and the
//! Linux 64-bit boot protocol (bzImage, or an ELF without PVH note).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::layout::*;
use crate::memory::MapEntry;

/// Errors loading the kernel or initramfs.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {path}")]
    KernelFile {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Neither an ELF vmlinux nor a bzImage.
    #[error("{0} is not a Linux kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel(String),
    /// linux-loader refused the image.
    #[error("cannot load kernel {path}")]
    Load {
        /// The path given.
        path: String,
        /// Why.
        source: linux_loader::loader::Error,
    },
    /// The initramfs cannot be read.
    #[error("cannot read initramfs {path}")]
    InitrdFile {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The initramfs is not a cpio archive (or a known compression of one).
    #[error("{0} is not an initramfs (cpio, gzip, xz, zstd, lz4 or bzip2)")]
    NotAnInitrd(String),
    /// No room for the initramfs.
    #[error("initramfs of {0} bytes does not fit in guest memory")]
    InitrdTooLarge(u64),
    /// The command line is too long.
    #[error("kernel command line is {0} bytes; at most {max} fit", max = CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    /// Writing boot data to guest memory failed.
    #[error("cannot write boot data to guest memory: {0}")]
    Memory(String),
}

/// How the boot vCPU must enter the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 32-bit protected mode at `entry`, `ebx` = `PVH_INFO_ADDR`.
    Pvh(GuestAddress),
    /// 64-bit long mode at `entry`, `rsi` = `ZERO_PAGE_ADDR`.
    Linux64(GuestAddress),
}

/// The kernel's image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux.
    Elf,
    /// bzImage.
    BzImage,
}

/// Detects the format from the file's magic numbers.
pub fn detect_format(f: &mut File, path: &str) -> Result<KernelFormat, BootError> {
    let io = |source| BootError::KernelFile {
        path: path.to_string(),
        source,
    };
    let mut head = [0u8; 0x206];
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let n = read_up_to(f, &mut head).map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(BootError::NotAKernel(path.to_string()))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What the kernel was loaded as.
pub struct LoadedKernel {
    /// Where to start.
    pub entry: EntryPoint,
    /// bzImage setup header (Linux boot protocol only).
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    /// End of the loaded image.
    kernel_end: u64,
}

/// Checks, before anything is allocated, that the kernel is a kernel and the
/// initramfs an initramfs.
pub fn check_files(kernel: &Path, initrd: Option<&Path>) -> Result<KernelFormat, BootError> {
    let p = kernel.display().to_string();
    let mut f = File::open(kernel).map_err(|source| BootError::KernelFile {
        path: p.clone(),
        source,
    })?;
    let format = detect_format(&mut f, &p)?;
    if let Some(i) = initrd {
        let ip = i.display().to_string();
        let mut head = [0u8; 6];
        let mut f = File::open(i).map_err(|source| BootError::InitrdFile {
            path: ip.clone(),
            source,
        })?;
        let n = read_up_to(&mut f, &mut head).map_err(|source| BootError::InitrdFile {
            path: ip.clone(),
            source,
        })?;
        check_initrd_magic(&head[..n], &ip)?;
    }
    Ok(format)
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|source| BootError::KernelFile {
        path: p.clone(),
        source,
    })?;
    let load_err = |source| BootError::Load {
        path: p.clone(),
        source,
    };
    match detect_format(&mut f, &p)? {
        KernelFormat::Elf => {
            let r =
                Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => EntryPoint::Pvh(a),
                _ => EntryPoint::Linux64(r.kernel_load),
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
                kernel_end: r.kernel_end,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let entry = r
                .kernel_load
                .checked_add(0x200)
                .ok_or(BootError::NotAKernel(p.clone()))?;
            Ok(LoadedKernel {
                entry: EntryPoint::Linux64(entry),
                setup_header: r.setup_header,
                kernel_end: r.kernel_end,
            })
        }
    }
}

/// Checks the initramfs's magic: a cpio archive or a compressed one.
fn check_initrd_magic(data: &[u8], path: &str) -> Result<(), BootError> {
    const MAGICS: [&[u8]; 7] = [
        b"070701",                       // cpio newc
        b"070702",                       // cpio newc with crc
        &[0x1f, 0x8b],                   // gzip
        &[0xfd, b'7', b'z', b'X', b'Z'], // xz
        &[0x28, 0xb5, 0x2f, 0xfd],       // zstd
        &[0x02, 0x21, 0x4c, 0x18],       // lz4 legacy
        b"BZh",                          // bzip2
    ];
    if MAGICS.iter().any(|m| data.starts_with(m)) {
        Ok(())
    } else {
        Err(BootError::NotAnInitrd(path.to_string()))
    }
}

/// Reads the initramfs and puts it at the top of low RAM; returns (addr, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u64), BootError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| BootError::InitrdFile {
        path: p.clone(),
        source,
    })?;
    check_initrd_magic(&data, &p)?;
    let size = data.len() as u64;
    let mut top = mem.last_addr().raw_value().min(MMIO_GAP_START - 1) + 1;
    if let Some(h) = &kernel.setup_header {
        if h.initrd_addr_max != 0 {
            top = top.min(u64::from(h.initrd_addr_max) + 1);
        }
    }
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel.kernel_end.max(HIMEM_START))
        .ok_or(BootError::InitrdTooLarge(size))?;
    vm_memory::Bytes::write_slice(mem, &data, GuestAddress(addr))
        .map_err(|e| BootError::Memory(e.to_string()))?;
    Ok((GuestAddress(addr), size))
}

/// Writes the command line, then the PVH start info or the zero page.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(GuestAddress, u64)>,
    map: &[MapEntry],
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX || cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    let merr = |e: &dyn std::fmt::Display| BootError::Memory(e.to_string());
    vm_memory::Bytes::write_slice(mem, &bytes, GuestAddress(CMDLINE_ADDR)).map_err(|e| merr(&e))?;

    match kernel.entry {
        EntryPoint::Pvh(_) => {
            let mut info = hvm_start_info {
                magic: 0x336e_c578,
                version: 1,
                cmdline_paddr: CMDLINE_ADDR,
                rsdp_paddr: rsdp.0,
                memmap_paddr: PVH_MEMMAP_ADDR,
                memmap_entries: map.len() as u32,
                ..Default::default()
            };
            let memmap: Vec<hvm_memmap_table_entry> = map
                .iter()
                .map(|e| hvm_memmap_table_entry {
                    addr: e.addr,
                    size: e.size,
                    type_: e.kind,
                    reserved: 0,
                })
                .collect();
            let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
            if let Some((addr, size)) = initrd {
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_ADDR;
                params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
                params.set_modules(
                    &[hvm_modlist_entry {
                        paddr: addr.0,
                        size,
                        ..Default::default()
                    }],
                    GuestAddress(PVH_MODLIST_ADDR),
                );
            }
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
            PvhBootConfigurator::write_bootparams(&params, mem).map_err(|e| merr(&e))
        }
        EntryPoint::Linux64(_) => {
            let mut bp = boot_params::default();
            if let Some(h) = kernel.setup_header {
                bp.hdr = h;
            } else {
                // A bare ELF: the header fields the kernel checks.
                bp.hdr.boot_flag = 0xaa55;
                bp.hdr.header = 0x5372_6448;
                bp.hdr.kernel_alignment = 0x0100_0000;
            }
            bp.hdr.type_of_loader = 0xff;
            bp.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
            bp.hdr.cmdline_size = bytes.len() as u32;
            if let Some((addr, size)) = initrd {
                bp.hdr.ramdisk_image = addr.0 as u32;
                bp.hdr.ramdisk_size = size as u32;
            }
            bp.acpi_rsdp_addr = rsdp.0;
            if map.len() > bp.e820_table.len() {
                return Err(BootError::Memory("too many e820 entries".into()));
            }
            for (slot, e) in bp.e820_table.iter_mut().zip(map) {
                slot.addr = e.addr;
                slot.size = e.size;
                slot.type_ = e.kind;
            }
            bp.e820_entries = map.len() as u8;
            let params = BootParams::new(&bp, GuestAddress(ZERO_PAGE_ADDR));
            LinuxBootConfigurator::write_bootparams(&params, mem).map_err(|e| merr(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(data).unwrap();
        p
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let m = mem();
        for (name, data) in [
            ("empty", &b""[..]),
            ("text", b"hello world"),
            ("elfish", b"\x7fEL"),
        ] {
            let p = tmp(name, data);
            assert!(
                matches!(load_kernel(&m, &p), Err(BootError::NotAKernel(_))),
                "{name}"
            );
            std::fs::remove_file(p).unwrap();
        }
        let missing = Path::new("/nonexistent/vmlinux");
        assert!(matches!(
            load_kernel(&m, missing),
            Err(BootError::KernelFile { .. })
        ));
    }

    #[test]
    fn truncated_elf_is_a_load_error() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        let p = tmp("trunc-elf", &elf);
        let r = load_kernel(&mem(), &p);
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(r, Err(BootError::Load { .. })), "{:?}", r.err());
    }

    #[test]
    fn initrd_magic_and_placement() {
        let m = mem();
        let k = LoadedKernel {
            entry: EntryPoint::Linux64(GuestAddress(HIMEM_START)),
            setup_header: None,
            kernel_end: 0x20_0000,
        };
        let bad = tmp("bad-initrd", b"not an archive");
        assert!(matches!(
            load_initrd(&m, &bad, &k),
            Err(BootError::NotAnInitrd(_))
        ));
        std::fs::remove_file(bad).unwrap();
        let good = tmp(
            "good-initrd",
            b"070701 a truncated cpio is the kernel's business",
        );
        let (addr, size) = load_initrd(&m, &good, &k).unwrap();
        std::fs::remove_file(good).unwrap();
        assert_eq!(addr.0 % 0x1000, 0);
        assert!(addr.0 + size <= 64 << 20);
        assert!(addr.0 >= 0x20_0000);
        // Too large for the space above the kernel.
        let big = tmp(
            "big-initrd",
            &[&[0x1f, 0x8b][..], &vec![0u8; 63 << 20]].concat(),
        );
        let r = load_initrd(&m, &big, &k);
        std::fs::remove_file(big).unwrap();
        assert!(matches!(r, Err(BootError::InitrdTooLarge(_))));
    }

    #[test]
    fn cmdline_limits() {
        let m = mem();
        let k = LoadedKernel {
            entry: EntryPoint::Pvh(GuestAddress(0x100_0000)),
            setup_header: None,
            kernel_end: 0x200_0000,
        };
        let map = crate::memory::memory_map(64 << 20);
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            write_boot_info(&m, &k, &long, None, &map, GuestAddress(ACPI_START)),
            Err(BootError::CmdlineTooLong(_))
        ));
        write_boot_info(
            &m,
            &k,
            "console=ttyS0",
            Some((GuestAddress(0x300_0000), 10)),
            &map,
            GuestAddress(ACPI_START),
        )
        .unwrap();
        let info: hvm_start_info =
            vm_memory::Bytes::read_obj(&m, GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, ACPI_START);
        assert_eq!(info.memmap_entries as usize, map.len());
        let module: hvm_modlist_entry =
            vm_memory::Bytes::read_obj(&m, GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 10));
    }
}
