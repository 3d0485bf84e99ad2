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
    /// A cpio initramfs that ends before its trailer.
    #[error("initramfs {0} is truncated (its cpio archive ends before the trailer)")]
    InitrdTruncated(String),
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

/// Checks, before anything is allocated, that the kernel is a kernel.
pub fn check_kernel(kernel: &Path) -> Result<KernelFormat, BootError> {
    let p = kernel.display().to_string();
    let mut f = File::open(kernel).map_err(|source| BootError::KernelFile {
        path: p.clone(),
        source,
    })?;
    detect_format(&mut f, &p)
}

/// Reads and checks the initramfs: a known compression, or a complete cpio
/// "newc" archive (every header and file inside the file, up to the trailer).
pub fn read_initrd(path: &Path) -> Result<Vec<u8>, BootError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| BootError::InitrdFile {
        path: p.clone(),
        source,
    })?;
    check_initrd_magic(&data, &p)?;
    if data.starts_with(b"0707") && !newc_complete(&data) {
        return Err(BootError::InitrdTruncated(p));
    }
    Ok(data)
}

/// Whether a newc archive's first member list runs to its `TRAILER!!!`.
pub fn newc_complete(data: &[u8]) -> bool {
    let field = |off: usize, i: usize| -> Option<usize> {
        let s = data.get(off + 6 + i * 8..off + 6 + (i + 1) * 8)?;
        usize::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
    };
    let align = |x: usize| x.checked_add(3).map(|x| x & !3);
    let mut off = 0usize;
    loop {
        let Some(magic) = data.get(off..off + 6) else {
            return false;
        };
        if magic != b"070701" && magic != b"070702" {
            return false;
        }
        let (Some(filesize), Some(namesize)) = (field(off, 6), field(off, 11)) else {
            return false;
        };
        let Some(name_end) = (off + 110).checked_add(namesize) else {
            return false;
        };
        let Some(name) = data.get(off + 110..name_end) else {
            return false;
        };
        if name.strip_suffix(&[0]) == Some(b"TRAILER!!!") {
            return true;
        }
        let Some(next) = align(name_end)
            .and_then(|d| d.checked_add(filesize))
            .filter(|end| *end <= data.len())
            .and_then(align)
        else {
            return false;
        };
        off = next;
    }
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

/// Real-mode code at the reset vector: `mov al, 0xfe; out 0x64, al; hlt;
/// jmp $-1`. A kernel that reboots "through the BIOS" (Linux's default on a
/// hardware-reduced ACPI machine without EFI) jumps here and pulses the i8042
/// reset line, which the VMM reports as a reboot instead of running whatever
/// bytes happen to be there.
pub const RESET_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// Writes [`RESET_STUB`] at the real-mode reset vector.
pub fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    vm_memory::Bytes::write_slice(mem, &RESET_STUB, GuestAddress(RESET_VECTOR))
        .map_err(|e| BootError::Memory(e.to_string()))
}

/// Puts the initramfs at the top of low RAM; returns (addr, size).
pub fn place_initrd(
    mem: &GuestMemoryMmap,
    data: &[u8],
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u64), BootError> {
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
    vm_memory::Bytes::write_slice(mem, data, GuestAddress(addr))
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
    vm_memory::Bytes::write_slice(mem, &bytes, GuestAddress(CMDLINE_ADDR)).map_err(|e| merr(&e))?;

    match kernel.entry {
        EntryPoint::Pvh(_) => write_pvh_info(mem, initrd, map, rsdp),
        EntryPoint::Linux64(_) => write_zero_page(mem, kernel, bytes.len(), initrd, map, rsdp),
    }
}

fn merr(e: &dyn std::fmt::Display) -> BootError {
    BootError::Memory(e.to_string())
}

/// The PVH start info, its module list (the initrd) and memory map.
fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<(GuestAddress, u64)>,
    map: &[MapEntry],
    rsdp: GuestAddress,
) -> Result<(), BootError> {
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

/// The zero page: the kernel's setup header (or the fields a bare ELF
/// needs), the command line's place and size, the initrd and the e820 map.
fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
    map: &[MapEntry],
    rsdp: GuestAddress,
) -> Result<(), BootError> {
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
    bp.hdr.cmdline_size = cmdline_len as u32;
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
    fn reset_vector_pulses_the_i8042_reset_line() {
        let m = mem();
        write_reset_stub(&m).unwrap();
        let mut code = [0u8; 16];
        vm_memory::Bytes::read_slice(&m, &mut code, GuestAddress(RESET_VECTOR)).unwrap();
        // mov al, 0xfe ; out 0x64, al: the value and port I8042Reset acts on.
        assert_eq!(&code[..4], &[0xb0, 0xfe, 0xe6, I8042_PORT as u8]);
        // hlt, then a jump back to the hlt (rel8 = -3): never runs off the end.
        assert_eq!(&code[4..7], &[0xf4, 0xeb, 0xfd]);
        // The 16 bytes up to 1 MiB hold nothing else.
        assert!(code[7..].iter().all(|&b| b == 0));
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

    /// A newc archive of `(name, mode, data)` entries (the last one the
    /// trailer), written by hand as the format says.
    fn newc(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(4) * 4, 0);
        for (i, (name, mode, data)) in entries.iter().enumerate() {
            let fields = [
                i as u32 + 1,
                *mode,
                0,
                0,
                1,
                0,
                data.len() as u32,
                0,
                0,
                0,
                0,
            ];
            out.extend_from_slice(b"070701");
            for f in fields {
                out.extend_from_slice(format!("{f:08x}").as_bytes());
            }
            out.extend_from_slice(format!("{:08x}{:08x}", name.len() + 1, 0).as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            pad(&mut out);
            out.extend_from_slice(data);
            pad(&mut out);
        }
        out
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
        assert!(matches!(read_initrd(&bad), Err(BootError::NotAnInitrd(_))));
        std::fs::remove_file(bad).unwrap();
        let cpio = newc(&[("init", 0o100755, b"#!/bin/sh\n"), ("TRAILER!!!", 0, b"")]);
        assert!(newc_complete(&cpio));
        for cut in [1, 6, 50, 110, 115, cpio.len() - 4] {
            assert!(!newc_complete(&cpio[..cut]), "cut at {cut}");
            let p = tmp("cut-initrd", &cpio[..cut]);
            let r = read_initrd(&p);
            std::fs::remove_file(p).unwrap();
            assert!(
                matches!(
                    r,
                    Err(BootError::InitrdTruncated(_) | BootError::NotAnInitrd(_))
                ),
                "cut at {cut}"
            );
        }
        // A header whose sizes lie is not complete.
        let mut lie = cpio.clone();
        lie[54..62].copy_from_slice(b"ffffffff");
        assert!(!newc_complete(&lie));
        let good = tmp("good-initrd", &cpio);
        let data = read_initrd(&good).unwrap();
        std::fs::remove_file(good).unwrap();
        let (addr, size) = place_initrd(&m, &data, &k).unwrap();
        assert_eq!(addr.0 % 0x1000, 0);
        assert!(addr.0 + size <= 64 << 20);
        assert!(addr.0 >= 0x20_0000);
        // Too large for the space above the kernel.
        let big = [&[0x1f, 0x8b][..], &vec![0u8; 63 << 20]].concat();
        assert!(matches!(
            place_initrd(&m, &big, &k),
            Err(BootError::InitrdTooLarge(_))
        ));
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
