//! The agent loop: serve the VMM's requests, populate lent memory, keep the workload busy,
//! halt when idle.

use core::sync::atomic::Ordering;

use guest_agent::agent::{Agent, Control, Mode};
use guest_agent::cmdline;
use guest_agent::mm::Mm;
use guest_agent::workload::{CheckError, Workload};
use protocol::boot::{BootInfo, DeviceDesc, DeviceKind, MemKind};
use protocol::layout::{EXIT_INTEGRITY, EXIT_OK, PROGRESS_AGENT_UP, PROGRESS_POPULATED};

use crate::arch::{apic, cpu, interrupts};
use crate::console::{Dec, Hex};
use crate::drivers::agent::AgentDriver;
use crate::drivers::capture::{CaptureDriver, Event as CaptureEvent, State};
use crate::hw::KernelHw;
use crate::{exit, progress};

/// Pages created per population step, between looks at the request queue.
const POPULATE_STEP: u32 = 64;

/// What the capture drivers do (`capture.*=` on the guest command line).
struct CaptureOptions {
    frames: u64,
    width: u32,
    height: u32,
    buffers: u32,
    align: u64,
    cycles: u64,
    /// Check every page and exit once every device has finished its cycles.
    exit_when_done: bool,
}

/// One capture device and how far its streaming has got.
struct Capture<'i> {
    name: &'i str,
    driver: CaptureDriver,
    cycles_left: u64,
}

impl Capture<'_> {
    /// Drive the device one step: start when idle, count frames, stop after enough.
    fn step(&mut self, hw: &mut KernelHw, opts: &CaptureOptions) -> bool {
        let d = &mut self.driver;
        if d.state == State::Idle && self.cycles_left > 0 {
            d.start(hw, opts.width, opts.height, opts.buffers, opts.align);
        }
        let mut busy = false;
        while let Some(event) = d.poll(hw) {
            busy = true;
            match event {
                CaptureEvent::Started { ok: true } => {
                    print!(
                        "cma-guest: {}: streaming {}x{} NV12 into buffers",
                        self.name,
                        Dec(opts.width.into()),
                        Dec(opts.height.into())
                    );
                    for b in d.buffers() {
                        print!(" {}", Hex(*b));
                    }
                    println!();
                }
                CaptureEvent::Started { ok: false } => {
                    println!("cma-guest: {}: start failed: no buffers", self.name);
                    self.cycles_left -= 1;
                }
                CaptureEvent::Dropped => {}
                CaptureEvent::Frame { .. } => {
                    if d.state == State::Streaming && d.frames_ok + d.frames_bad >= opts.frames {
                        d.stop(hw);
                    }
                }
                CaptureEvent::Stopped => {
                    println!(
                        "cma-guest: {}: {} frames checked, {} bad; stopped, buffers returned",
                        self.name,
                        Dec(d.frames_ok),
                        Dec(d.frames_bad)
                    );
                    self.cycles_left -= 1;
                }
            }
        }
        busy
    }
}

/// Options from the guest command line.
struct Options {
    mode: Mode,
    delay_ms: u64,
    tick_ms: u64,
    rewrite: u32,
    check: u32,
    pin: u32,
    pin_churn: u32,
    target: u32,
    seed: u64,
    capture: CaptureOptions,
}

impl Options {
    fn parse(args: &str, pages: u32) -> Self {
        let mode = cmdline::get(args, "agent.mode")
            .and_then(Mode::parse)
            .unwrap_or(Mode::Normal);
        let n = |key, default| cmdline::get_u64(args, key, default);
        Options {
            mode,
            delay_ms: n("agent.delay_ms", 3000),
            tick_ms: n("tick_ms", 20).clamp(1, 1000),
            rewrite: n("workload.rewrite", 4) as u32,
            check: n("workload.check", 4) as u32,
            pin: n("workload.pin", 0) as u32,
            pin_churn: n("workload.pin_churn", 0) as u32,
            target: (n("workload.target", u64::from(pages)) as u32).min(pages),
            seed: n("workload.seed", 0x5eed),
            capture: CaptureOptions {
                frames: n("capture.frames", 0),
                width: n("capture.width", 1280) as u32,
                height: n("capture.height", 720) as u32,
                buffers: n("capture.buffers", 4) as u32,
                align: n("capture.align", 64 << 10),
                cycles: n("capture.cycles", 1),
                exit_when_done: n("capture.exit", 0) == 1,
            },
        }
    }
}

/// Whether the guest may read `gpa` (a Probe): only RAM and CMA regions.
fn readable(info: &BootInfo, gpa: u64) -> bool {
    info.mem_map()
        .iter()
        .any(|e| e.kind != MemKind::Reserved && gpa >= e.base && gpa + 8 <= e.end())
}

fn fail_check(e: CheckError) -> ! {
    match e {
        CheckError::Content {
            id,
            offset,
            expected,
            found,
        } => println!(
            "cma-guest: integrity error: page {} offset {} expected {} found {}",
            Dec(id.into()),
            Dec(offset as u64),
            Hex(expected),
            Hex(found)
        ),
        CheckError::Manifest { id, gpa } => println!(
            "cma-guest: integrity error: page {} not in frame {}",
            Dec(id.into()),
            Hex(gpa)
        ),
    }
    exit(EXIT_INTEGRITY)
}

/// Serve the agent device `dev` forever (until the VMM asks us to shut down).
pub fn run(
    info: &BootInfo,
    dev: &DeviceDesc,
    mm: &mut Mm,
    hw: &mut KernelHw,
    manifest: u64,
    pages: u32,
) -> ! {
    let opts = Options::parse(info.cmdline(), pages);
    apic::enable();
    apic::start_timer((opts.tick_ms * 1000) as u32);
    let mut driver = match AgentDriver::new(dev, mm, hw, opts.tick_ms * 1000) {
        Ok(d) => d,
        Err(e) => {
            println!("cma-guest: agent device: {e:?}");
            exit(protocol::layout::EXIT_BAD_BOOT_INFO)
        }
    };
    let workload = match Workload::new(manifest, pages, opts.target, opts.seed) {
        Ok(w) => w,
        Err(_) => exit(protocol::layout::EXIT_BAD_BOOT_INFO),
    };
    let mut agent = Agent::new(workload, opts.mode, opts.delay_ms);
    let mut captures: [Option<Capture>; 7] = Default::default();
    let devices = info
        .devices()
        .iter()
        .filter(|d| d.kind == DeviceKind::Capture);
    for (slot, d) in captures.iter_mut().zip(devices) {
        match CaptureDriver::new(d, mm, hw) {
            Ok(driver) => {
                *slot = Some(Capture {
                    name: d.name.as_str(),
                    driver,
                    cycles_left: if opts.capture.frames > 0 {
                        opts.capture.cycles
                    } else {
                        0
                    },
                })
            }
            Err(e) => println!("cma-guest: {}: {e:?}", d.name.as_str()),
        }
    }
    if agent.hello(&mut driver).is_err() {
        println!("cma-guest: the VMM refused Hello");
    }
    progress(PROGRESS_AGENT_UP);
    let mut populated = false;
    let mut last_tick = 0;
    loop {
        let mut busy = false;
        while let Some(msg) = driver.next_request(hw) {
            busy = true;
            if agent.handle(msg, mm, hw, &mut driver, |gpa| readable(info, gpa))
                == Control::Shutdown
            {
                shutdown(&mut agent, hw);
            }
        }
        if !agent.quiesced {
            if !populated {
                let made = agent.workload.populate(mm, hw, POPULATE_STEP);
                if agent.workload.is_populated() || made == 0 {
                    populated = true;
                    let pinned = agent.workload.pin(mm, hw, opts.pin);
                    println!(
                        "cma-guest: workload: {} pages populated, {} pinned",
                        Dec(agent.workload.present().into()),
                        Dec(pinned.into())
                    );
                    progress(PROGRESS_POPULATED);
                }
                continue;
            }
            for c in captures.iter_mut().flatten() {
                busy |= c.step(hw, &opts.capture);
            }
            let finished = captures
                .iter()
                .flatten()
                .all(|c| c.cycles_left == 0 && c.driver.state == State::Idle);
            if opts.capture.exit_when_done && opts.capture.frames > 0 && finished {
                shutdown(&mut agent, hw);
            }
            let tick = interrupts::TICKS.load(Ordering::Relaxed);
            if tick != last_tick {
                last_tick = tick;
                agent.workload.rewrite(hw, opts.rewrite);
                if let Err(e) = agent.workload.check(hw, opts.check) {
                    fail_check(e);
                }
                // Pins move around lent memory, as I/O comes and goes: evictions meet
                // pinned pages at places the VMM cannot predict.
                if opts.pin_churn > 0 {
                    agent.workload.unpin(mm, hw, opts.pin_churn);
                    agent.workload.pin_elsewhere(mm, hw, opts.pin_churn);
                }
            }
        }
        if !busy {
            cpu::wait_for_interrupt();
        }
    }
}

/// Check every page and exit with the verdict.
fn shutdown(agent: &mut Agent, hw: &mut KernelHw) -> ! {
    let capacity = agent.workload.capacity();
    match agent.workload.check(hw, capacity) {
        Ok(n) => {
            println!(
                "cma-guest: shutdown: {} pages checked, all intact",
                Dec(n.into())
            );
            exit(EXIT_OK)
        }
        Err(e) => fail_check(e),
    }
}
