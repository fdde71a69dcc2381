//! In-process VMs for the end-to-end tests: boot the real guest under KVM with the VMM
//! library, wait until it has populated its lent memory, and stop it on drop.

use std::time::Duration;

use protocol::layout::PROGRESS_POPULATED;
use vmm::cli::{Command, parse};
use vmm::exercise::check_guest;
use vmm::grant::{GrantManager, GrantPolicy};
use vmm::integrity::IntegrityReport;
use vmm::machine::{RunOutcome, RunningVmm, Vmm, VmmOptions};

/// A running guest that is shut down when dropped.
pub struct TestVm {
    vm: Option<RunningVmm>,
}

/// How long a guest may take to populate its lent memory on this (slow, nested) KVM.
const POPULATE_TIMEOUT: Duration = Duration::from_secs(120);

impl TestVm {
    /// Boot with `cma-vmm run` flags (`--memory`, `--cma`, `--guest-args`, ...), with
    /// `policy`, and wait for the workload to populate lent memory.
    pub fn boot(args: &[&str], policy: GrantPolicy) -> Self {
        crate::require_kvm();
        let argv = std::iter::once("run")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        let run = match parse(argv).expect("flags parse") {
            Command::Run(r) => r,
            other => panic!("not a run command: {other:?}"),
        };
        let config = run.config.validate().expect("valid configuration");
        let options = VmmOptions {
            echo_console: false,
            policy,
            ..VmmOptions::default()
        };
        let vm = Vmm::new(config, &options)
            .expect("build the VM")
            .start()
            .expect("start the VM");
        let populated = vm.wait_milestone(PROGRESS_POPULATED, POPULATE_TIMEOUT);
        assert!(
            populated,
            "the guest did not populate its lent memory: {:?}\n{}",
            vm.outcome(),
            vm.console().text()
        );
        TestVm { vm: Some(vm) }
    }

    /// The running VM.
    pub fn vm(&self) -> &RunningVmm {
        self.vm.as_ref().expect("running")
    }

    /// The allocation state machine.
    pub fn grants(&self) -> &std::sync::Arc<GrantManager> {
        self.vm().grants()
    }

    /// Everything the guest printed.
    pub fn console(&self) -> String {
        self.vm().console().text()
    }

    /// Verify every workload page from the host (the guest is quiesced meanwhile).
    pub fn integrity(&self) -> IntegrityReport {
        check_guest(self.vm()).expect("query the guest")
    }

    /// Take the running VM out (to shut it down while other threads use it).
    pub fn take(mut self) -> RunningVmm {
        self.vm.take().expect("running")
    }

    /// Ask the guest to check its own pages and exit; its status.
    pub fn shutdown_guest(mut self) -> RunOutcome {
        let vm = self.vm.take().expect("running");
        vm.grants().agent().shutdown_guest().expect("send Shutdown");
        vm.wait(Some(Duration::from_secs(60))).outcome
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.shutdown();
        }
    }
}
