//! Port-I/O registers through which the guest stops the VM or reports
//! progress: the ACPI sleep-control/reset registers of the hardware-reduced
//! FADT, pvpanic, the i8042 reset line, and the boot-status port written by the
//! guest init (boot timer and the application's exit status).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Why the guest asked the VMM to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// ACPI S5 (power off).
    PowerOff = 1,
    /// ACPI reset register or i8042 reset pulse.
    Reset = 2,
    /// pvpanic "guest panicked".
    Panic = 3,
}

/// Shared between the stop registers and the VMM: the first reason wins and an
/// eventfd wakes the VMM's event loop.
pub struct GuestStop {
    reason: AtomicU8,
    evt: EventFd,
}

impl GuestStop {
    /// A stop signal that writes `evt` when the guest stops.
    pub fn new(evt: EventFd) -> Arc<Self> {
        Arc::new(Self {
            reason: AtomicU8::new(0),
            evt,
        })
    }

    /// Records `reason` (if none was recorded yet) and wakes the VMM.
    pub fn stop(&self, reason: StopReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if the guest asked to stop.
    pub fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::SeqCst) {
            1 => Some(StopReason::PowerOff),
            2 => Some(StopReason::Reset),
            3 => Some(StopReason::Panic),
            _ => None,
        }
    }

    /// The eventfd written on every stop.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// SLP_TYP value the DSDT's `_S5_` object gives for power-off.
pub const SLEEP_TYPE_S5: u8 = 5;
/// Size of the ACPI PM block: sleep control (+0), sleep status (+1), reset (+2).
pub const ACPI_PM_LEN: u64 = 3;
const SLP_EN: u8 = 1 << 5;
/// Value the FADT names for the reset register.
pub const ACPI_RESET_VALUE: u8 = 1;

/// The hardware-reduced ACPI sleep control/status and reset registers.
pub struct AcpiPm {
    stop: Arc<GuestStop>,
}

impl AcpiPm {
    /// Registers that stop the VM through `stop`.
    pub fn new(stop: Arc<GuestStop>) -> Self {
        Self { stop }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [v] = data else { return };
        match offset {
            // Sleep control: SLP_TYP in bits 2..=4, SLP_EN in bit 5.
            0 if v & SLP_EN != 0 && (v >> 2) & 0x7 == SLEEP_TYPE_S5 => {
                self.stop.stop(StopReason::PowerOff)
            }
            2 if *v == ACPI_RESET_VALUE => self.stop.stop(StopReason::Reset),
            _ => {}
        }
    }
}

/// pvpanic event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic I/O port (ACPI `QEMU0001`).
pub struct PvPanic {
    stop: Arc<GuestStop>,
}

impl PvPanic {
    /// A pvpanic port that stops the VM through `stop`.
    pub fn new(stop: Arc<GuestStop>) -> Self {
        Self { stop }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Reading gives the supported events.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|v| v & PVPANIC_PANICKED != 0) {
            self.stop.stop(StopReason::Panic);
        }
    }
}

/// The i8042 command port (0x64): only the CPU-reset pulse (0xfe) is modelled,
/// as Firecracker does; reads say "no data, input buffer empty".
pub struct I8042Reset {
    stop: Arc<GuestStop>,
}

impl I8042Reset {
    /// An i8042 reset line that stops the VM through `stop`.
    pub fn new(stop: Arc<GuestStop>) -> Self {
        Self { stop }
    }
}

impl BusDevice for I8042Reset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data == [0xfe] {
            self.stop.stop(StopReason::Reset);
        }
    }
}

/// Value the guest init writes to offset 0 of the boot-status port once it runs
/// (the same magic as Firecracker's boot timer).
pub const BOOT_DONE_MAGIC: u8 = 123;
/// Size of the boot-status port block: boot timer (+0), exit status (+1).
pub const BOOT_STATUS_LEN: u64 = 2;

/// The boot-status port: offset 0 takes [`BOOT_DONE_MAGIC`] (boot timer),
/// offset 1 takes the guest application's exit status.
pub struct BootStatus {
    start: Instant,
    state: Arc<Mutex<BootStatusState>>,
}

/// What the guest reported through the boot-status port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootStatusState {
    /// Time from VMM start to the guest init's first write.
    pub boot_time: Option<Duration>,
    /// The application's exit status (the last one written).
    pub exit_status: Option<u8>,
}

impl BootStatus {
    /// A port that measures boot time from `start`.
    pub fn new(start: Instant) -> (Self, Arc<Mutex<BootStatusState>>) {
        let state = Arc::new(Mutex::new(BootStatusState::default()));
        (
            Self {
                start,
                state: state.clone(),
            },
            state,
        )
    }
}

impl BusDevice for BootStatus {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [v] = data else { return };
        let mut st = crate::bus::lock(&self.state);
        match offset {
            0 if *v == BOOT_DONE_MAGIC && st.boot_time.is_none() => {
                let t = self.start.elapsed();
                st.boot_time = Some(t);
                tracing::info!(
                    "boot-timer: guest init reached after {:.1} ms",
                    t.as_secs_f64() * 1000.0
                );
            }
            1 => st.exit_status = Some(*v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop() -> Arc<GuestStop> {
        GuestStop::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn acpi_s5_powers_off_and_reset_resets() {
        let s = stop();
        let mut pm = AcpiPm::new(s.clone());
        pm.write(0, &[(3 << 2) | SLP_EN]); // S3: not supported, ignored
        pm.write(0, &[SLEEP_TYPE_S5 << 2]); // no SLP_EN
        pm.write(0, &[0x34, 0]); // wrong width
        assert_eq!(s.reason(), None);
        pm.write(0, &[(SLEEP_TYPE_S5 << 2) | SLP_EN]);
        assert_eq!(s.reason(), Some(StopReason::PowerOff));
        assert_eq!(s.eventfd().read().unwrap(), 1);

        let s = stop();
        let mut pm = AcpiPm::new(s.clone());
        pm.write(2, &[ACPI_RESET_VALUE]);
        assert_eq!(s.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn first_reason_wins() {
        let s = stop();
        PvPanic::new(s.clone()).write(0, &[PVPANIC_PANICKED]);
        I8042Reset::new(s.clone()).write(0, &[0xfe]);
        assert_eq!(s.reason(), Some(StopReason::Panic));
    }

    #[test]
    fn i8042_only_reset_pulse() {
        let s = stop();
        let mut k = I8042Reset::new(s.clone());
        k.write(0, &[0xff]);
        k.write(1, &[0xfe]);
        assert_eq!(s.reason(), None);
        k.write(0, &[0xfe]);
        assert_eq!(s.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn boot_status_records_time_once_and_exit_status() {
        let (mut port, state) = BootStatus::new(Instant::now());
        port.write(0, &[1]);
        assert_eq!(state.lock().unwrap().boot_time, None);
        port.write(0, &[BOOT_DONE_MAGIC]);
        let t = state.lock().unwrap().boot_time.unwrap();
        port.write(0, &[BOOT_DONE_MAGIC]);
        assert_eq!(state.lock().unwrap().boot_time, Some(t));
        port.write(1, &[7]);
        assert_eq!(state.lock().unwrap().exit_status, Some(7));
    }
}
