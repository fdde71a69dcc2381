//! COM1 (vm-superio's 16550A), forwarding the guest's console to stdout and, for tests and
//! the VMM itself, into a capture buffer.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::sync::lock;

/// Where console output goes.
#[derive(Debug, Default)]
pub struct ConsoleSink {
    /// Echo to the VMM's stdout.
    pub echo: bool,
    /// Everything the guest printed.
    pub captured: Vec<u8>,
}

/// A cloneable handle to the console output.
#[derive(Debug, Clone, Default)]
pub struct Console(Arc<Mutex<ConsoleSink>>);

impl Console {
    /// A console that echoes to stdout if `echo`.
    pub fn new(echo: bool) -> Self {
        Console(Arc::new(Mutex::new(ConsoleSink {
            echo,
            captured: Vec::new(),
        })))
    }

    /// Everything printed so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0).captured).into_owned()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut sink = lock(&self.0);
        // Bound what we keep: a guest that prints forever must not exhaust host memory.
        if sink.captured.len() < (16 << 20) {
            sink.captured.extend_from_slice(buf);
        }
        if sink.echo {
            let mut out = std::io::stdout().lock();
            out.write_all(buf)?;
            if buf.contains(&b'\n') {
                out.flush()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if lock(&self.0).echo {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

/// The serial port's interrupt: an irqfd on IOAPIC pin 4 (Linux's 8250 driver needs the
/// transmit-empty interrupt), or none (the reference guest polls and never enables it).
#[derive(Debug)]
pub struct SerialIrq(Option<EventFd>);

impl Trigger for SerialIrq {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        match &self.0 {
            Some(evt) => evt.write(1),
            None => Ok(()),
        }
    }
}

/// COM1 on the port-I/O bus.
pub struct SerialDevice(Serial<SerialIrq, NoEvents, Console>);

impl SerialDevice {
    /// A serial port writing to `console`, interrupting through `irq` if given.
    pub fn new(console: Console, irq: Option<EventFd>) -> Self {
        SerialDevice(Serial::new(SerialIrq(irq), console))
    }
}

impl SerialDevice {
    /// Queue `bytes` as received input (raising the data-ready interrupt); how many fit in
    /// the receive FIFO.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let room = self.0.fifo_capacity().min(bytes.len());
        self.0.enqueue_raw_bytes(&bytes[..room]).unwrap_or(0)
    }
}

/// Feed the VMM's stdin to the serial port, on a thread of its own, until stdin ends. The
/// terminal stays in its normal (line) mode: a line is sent when Enter is pressed, and
/// Ctrl-C still reaches the VMM.
pub fn forward_stdin(serial: Arc<Mutex<SerialDevice>>) -> std::io::Result<()> {
    use std::io::Read;
    std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let sent = lock(&serial).receive(pending);
                    pending = &pending[sent..];
                    if !pending.is_empty() {
                        // The guest has not drained its FIFO yet.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        })
        .map(|_| ())
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            *byte = self.0.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            // Output errors (a closed stdout) must not stop the guest.
            let _ = self.0.write(off, *byte);
        }
    }
}
