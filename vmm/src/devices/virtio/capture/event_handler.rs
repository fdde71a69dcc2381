//! The capture device's event loop: queue notifications, and a frame timer.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::device::CaptureDevice;
use crate::sync::lock;

/// Interval between frames while streaming.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(5);

/// Subscribes a capture device to its notify eventfd and frame timer.
pub struct CaptureEventHandler {
    device: Arc<Mutex<CaptureDevice>>,
    notify: EventFd,
    timer: TimerFd,
}

impl CaptureEventHandler {
    /// `notify` is the QueueNotify ioeventfd.
    pub fn new(device: Arc<Mutex<CaptureDevice>>, notify: EventFd) -> std::io::Result<Self> {
        let mut timer = TimerFd::new().map_err(std::io::Error::from)?;
        timer
            .reset(FRAME_INTERVAL, Some(FRAME_INTERVAL))
            .map_err(std::io::Error::from)?;
        Ok(CaptureEventHandler {
            device,
            notify,
            timer,
        })
    }
}

impl MutEventSubscriber for CaptureEventHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            lock(&self.device).produce_frame();
        } else {
            let _ = self.notify.read();
            let mut dev = lock(&self.device);
            dev.process_commands();
            dev.produce_frame();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.notify, EventSet::IN));
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }
}
