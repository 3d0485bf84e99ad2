//! The guest's TAP device and its IPv4 configuration (the classic
//! `SIOCSIF*`/`SIOCADDRT` ioctls: no netlink, no tools in the guest).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::dhcp::Lease;
use super::NetError;

/// `struct rtentry` of `<net/route.h>` (x86_64 layout).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

fn sockaddr(a: [u8; 4]) -> libc::sockaddr {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from_ne_bytes(a);
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes); the
    // kernel reads it as sockaddr_in by its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// A TAP interface, its frames read and written through [`Tap::file`]; its
/// configuration through [`Tap::iface`].
pub struct Tap {
    file: File,
    iface: Iface,
}

/// A network interface's IPv4 configuration, by name.
pub struct Iface {
    name: [libc::c_char; libc::IFNAMSIZ],
    ctl: OwnedFd,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
    move |e| NetError::Io(what, e)
}

fn last(what: &'static str) -> NetError {
    NetError::Io(what, std::io::Error::last_os_error())
}

impl Tap {
    /// Creates TAP interface `name`, non-blocking: frames without packet
    /// information, each behind a `virtio_net_hdr` ([`super::vnet`]).
    pub fn open(name: &str) -> Result<Self, NetError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(io("/dev/net/tun"))?;
        let mut ifr = blank_ifreq_named(name);
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads an ifreq we own.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(last("TUNSETIFF"));
        }
        let mut iface = Iface::new(name)?;
        // The kernel may have picked another name.
        iface.name = ifr.ifr_name;
        Ok(Self { file, iface })
    }

    /// The frames.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The interface's configuration.
    pub fn iface(&self) -> &Iface {
        &self.iface
    }
}

fn blank_ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    ifr
}

impl Iface {
    /// The interface called `name` (it need not exist yet).
    pub fn new(name: &str) -> Result<Self, NetError> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(last("socket"));
        }
        Ok(Self {
            name: blank_ifreq_named(name).ifr_name,
            // SAFETY: fd is a fresh descriptor we own.
            ctl: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ifreq(&self) -> libc::ifreq {
        // SAFETY: as above.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = self.name;
        ifr
    }

    fn ioctl(
        &self,
        req: libc::c_ulong,
        ifr: &mut libc::ifreq,
        what: &'static str,
    ) -> Result<(), NetError> {
        // SAFETY: the SIOC*IF* requests used here read or write one ifreq.
        if unsafe { libc::ioctl(self.ctl.as_raw_fd(), req, ifr as *mut libc::ifreq) } < 0 {
            return Err(last(what));
        }
        Ok(())
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> Result<[u8; 6], NetError> {
        let mut ifr = self.ifreq();
        self.ioctl(libc::SIOCGIFHWADDR, &mut ifr, "SIOCGIFHWADDR")?;
        // SAFETY: SIOCGIFHWADDR filled in the hardware address.
        let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        Ok(std::array::from_fn(|i| data[i] as u8))
    }

    fn set_flags(&self, up: bool) -> Result<(), NetError> {
        let mut ifr = self.ifreq();
        self.ioctl(libc::SIOCGIFFLAGS, &mut ifr, "SIOCGIFFLAGS")?;
        // SAFETY: SIOCGIFFLAGS filled in the flags.
        let mut flags = unsafe { ifr.ifr_ifru.ifru_flags };
        let up_flag = libc::IFF_UP as libc::c_short;
        flags = if up {
            flags | up_flag
        } else {
            flags & !up_flag
        };
        ifr.ifr_ifru.ifru_flags = flags;
        self.ioctl(libc::SIOCSIFFLAGS, &mut ifr, "SIOCSIFFLAGS")
    }

    fn set_addr(&self, req: libc::c_ulong, a: [u8; 4], what: &'static str) -> Result<(), NetError> {
        let mut ifr = self.ifreq();
        ifr.ifr_ifru.ifru_addr = sockaddr(a);
        self.ioctl(req, &mut ifr, what)
    }

    /// Brings the link up with the lease's address, netmask, MTU and
    /// default route.
    pub fn up(&self, l: &Lease) -> Result<(), NetError> {
        if let Some(mtu) = l.mtu.filter(|m| *m >= 576) {
            let mut ifr = self.ifreq();
            ifr.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
            self.ioctl(libc::SIOCSIFMTU, &mut ifr, "SIOCSIFMTU")?;
        }
        self.set_addr(libc::SIOCSIFADDR, l.addr, "SIOCSIFADDR")?;
        self.set_addr(libc::SIOCSIFNETMASK, l.mask, "SIOCSIFNETMASK")?;
        self.set_flags(true)?;
        if let Some(gw) = l.router {
            let mut rt = RtEntry {
                pad1: 0,
                dst: sockaddr([0; 4]),
                gateway: sockaddr(gw),
                genmask: sockaddr([0; 4]),
                flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
                pad2: 0,
                pad3: 0,
                pad4: std::ptr::null_mut(),
                metric: 0,
                dev: self.name.as_ptr().cast_mut(),
                mtu: 0,
                window: 0,
                irtt: 0,
            };
            // SAFETY: SIOCADDRT reads one rtentry; `dev` points at our
            // NUL-terminated name, which outlives the call.
            if unsafe { libc::ioctl(self.ctl.as_raw_fd(), libc::SIOCADDRT, &mut rt) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(NetError::Io("SIOCADDRT", e));
                }
            }
        }
        Ok(())
    }

    /// Takes the link down and its address away (its routes go with it).
    pub fn down(&self) -> Result<(), NetError> {
        self.set_flags(false)?;
        // Address 0.0.0.0 deletes the interface's address.
        let r = self.set_addr(libc::SIOCSIFADDR, [0; 4], "SIOCSIFADDR");
        match r {
            Err(NetError::Io(_, e)) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r,
        }
    }
}
