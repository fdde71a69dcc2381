//! The agent thread's event loop glue: the guest's queue notifications (ioeventfd) and
//! the callers' kicks both mean "look at the queues".

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::device::AgentDevice;
use crate::sync::lock;

/// Subscribes the agent device to its two eventfds.
pub struct AgentEventHandler {
    device: Arc<Mutex<AgentDevice>>,
    notify: EventFd,
    kick: EventFd,
}

impl AgentEventHandler {
    /// `notify` is the QueueNotify ioeventfd, `kick` the callers' eventfd.
    pub fn new(device: Arc<Mutex<AgentDevice>>, notify: EventFd, kick: EventFd) -> Self {
        AgentEventHandler {
            device,
            notify,
            kick,
        }
    }
}

impl MutEventSubscriber for AgentEventHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // Reading clears the counter; an error only means it was already clear.
        if events.fd() == std::os::fd::AsRawFd::as_raw_fd(&self.notify) {
            let _ = self.notify.read();
        } else {
            let _ = self.kick.read();
        }
        lock(&self.device).process();
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.notify, &self.kick] {
            // Registration only fails if the fd is already registered or epoll is broken;
            // the device would then never run, which the callers' timeouts report.
            let _ = ops.add(Events::new(fd, EventSet::IN));
        }
    }
}
