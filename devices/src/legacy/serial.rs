//! The 8250 UART on COM1 (0x3f8, IRQ 4), backed by `vm-superio`.

use std::io::Write;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Errors from the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The input FIFO could not take the bytes or the interrupt failed.
    #[error("serial input: {0:?}")]
    Input(vm_superio::serial::Error<std::io::Error>),
}

/// An `EventFd` (registered as an irqfd) used as the UART's interrupt line.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1 as seen by the guest; output goes to any writer.
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// A UART that raises `irq` and writes what the guest sends to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: vm_superio::Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// How many bytes the receive FIFO can take now.
    pub fn fifo_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Queues host input for the guest to read; returns how many were taken.
    pub fn enqueue(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        let n = bytes.len().min(self.inner.fifo_capacity());
        if n == 0 {
            return Ok(0);
        }
        self.inner
            .enqueue_raw_bytes(&bytes[..n])
            .map_err(SerialError::Input)
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            // A failing host writer (closed pipe) must not stop the guest.
            let _ = self.inner.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_writer_and_input_raises_irq() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable "received data available" interrupts (IER bit 0).
        s.write(1, &[1]);
        assert_eq!(s.enqueue(b"x").unwrap(), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
        // Wide or out-of-range accesses are ignored, not a panic.
        s.write(u64::MAX, &[0]);
        let mut wide = [0u8; 4];
        s.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
    }

    #[test]
    fn input_is_bounded_by_fifo() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Box::new(std::io::sink()));
        let cap = s.fifo_capacity();
        let big = vec![b'a'; cap + 10];
        assert_eq!(s.enqueue(&big).unwrap(), cap);
        assert_eq!(s.enqueue(b"more").unwrap(), 0);
    }
}
