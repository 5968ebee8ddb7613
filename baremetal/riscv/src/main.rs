//! A multi-core test image: chargetree's groups, per-CPU stocks and epoch reclamation on
//! QEMU's 32-bit RISC-V `virt` machine with four harts, in machine mode, without firmware.
//!
//! * **"This CPU" is the hart**: [`HartCpus`] implements `CpuProvider` from `mhartid`, with
//!   the embedder's side of the contract written in its `SAFETY` comment.
//! * **Every hart charges and uncharges** groups through its per-CPU stock
//!   (`Group::try_charge` / `Group::uncharge`): a `steady` tenant that lives through the run,
//!   and job groups found through shared [`OwnerCell`]s, read under each hart's own epoch
//!   participant (`Tree::register`: without std there is no thread-local pinning).
//! * **A machine-timer interrupt on every hart charges too**, the `steady` tenant, through
//!   the same per-CPU stock as the code it interrupts: when it lands inside a stock
//!   operation, chargetree sees the nested context on the same CPU and takes its slow path.
//! * **Hart 0 is also the controller**: it replaces job groups (creating a new one, taking
//!   the old one offline while other harts still hold and charge it), runs `Tree::drain_all`
//!   (stealing cached units from the other harts' stocks, busy or idle) and `Tree::reclaim`.
//! * **At the end**, every counter is balanced (each group's usage 0 after a final drain, no
//!   clamped uncharge anywhere), every group was released and freed exactly once (an
//!   `Observer` counts per id), and the heap is back where it was before the tree existed.
//!
//! The checks do catch a provider that breaks the contract: with harts 1 and 2 both given
//! index 1, 8 runs of 8 failed the balance check (the root's usage 31 to 83 above 0 at the
//! end: stock updates of the two harts lost to each other); with a 2 s storm 3 of 5 did,
//! hence the 5 s one.
//!
//! Output goes to the UART (NS16550A at 0x1000_0000); the verdict to the virt machine's test
//! device (SiFive test finisher at 0x10_0000): QEMU exits with 0 on success and with the
//! failure code otherwise (1: a check failed or any hart panicked, 3: a trap).
//!
//! Memory-mapped devices (QEMU's `virt` machine, `hw/riscv/virt.c`): CLINT at 0x0200_0000,
//! with `msip` at +0 (4 bytes per hart), `mtimecmp` at +0x4000 (8 bytes per hart) and `mtime`
//! at +0xbff8, counting at 10 MHz.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use core::arch::{asm, global_asm};
use core::fmt::{self, Write as _};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering, compiler_fence};

use chargetree::cpu::CpuProvider;
use chargetree::group::{
    ChargeFailure, ChargeOptions, Group, GroupId, GroupSpec, Observer, OwnerCell, Tree, TreeConfig,
};
use embedded_alloc::LlffHeap;

/// Harts the image runs on (QEMU `-smp 4`; `_max_hart_id` in memory.x).
const HARTS: usize = 4;

// ---------------------------------------------------------------------------------------------
// "This CPU": the hart.

/// Reads `mhartid`.
#[inline(always)]
fn hart_id() -> usize {
    riscv::register::mhartid::read()
}

/// Each hart is one CPU; its index is its `mhartid`.
#[derive(Clone, Copy, Debug, Default)]
struct HartCpus;

// SAFETY: the embedder's contract, point by point:
// 1. `count` is the constant `HARTS`.
// 2. `current` returns `Some(mhartid)` only when it is below `HARTS`, else `None`.
// 3. Exclusivity: each hart runs exactly one thread of code, in machine mode, from reset to
//    the end, with no scheduler: nothing ever migrates between harts, so the code running on
//    hart `h` is the only main-line context that can read `mhartid == h`. The one other
//    context that runs on hart `h` is its own trap handler (the machine-timer interrupt),
//    which the hardware enters with interrupts disabled (mstatus.MIE cleared on trap entry,
//    and the handler never sets it again), so it cannot nest further and runs to completion
//    before the interrupted code resumes: exactly the nesting the contract allows, and that
//    chargetree detects. Two harts never share an index because no two harts have the same
//    `mhartid`.
unsafe impl CpuProvider for HartCpus {
    fn count(&self) -> usize {
        HARTS
    }
    fn current(&self) -> Option<usize> {
        let h = hart_id();
        if h < HARTS { Some(h) } else { None }
    }
}

// ---------------------------------------------------------------------------------------------
// Devices.

const CLINT: usize = 0x0200_0000;
const MTIME: usize = CLINT + 0xbff8;
const UART: usize = 0x1000_0000;
const TEST_DEVICE: usize = 0x0010_0000;
/// `mtime` ticks per second on `virt`.
const MTIME_HZ: u64 = 10_000_000;

fn mtime() -> u64 {
    // The 64-bit counter read as two halves: high, low, high again until the high half did
    // not change (a carry between the two reads would pair a new high with an old low).
    loop {
        // SAFETY: `mtime` is a device register of the virt machine's CLINT, always mapped;
        // volatile reads of it have no side effects.
        let (hi, lo, hi2) = unsafe {
            let p = MTIME as *const u32;
            (ptr::read_volatile(p.add(1)), ptr::read_volatile(p), ptr::read_volatile(p.add(1)))
        };
        if hi == hi2 {
            return (u64::from(hi) << 32) | u64::from(lo);
        }
    }
}

/// Sets this hart's `mtimecmp`: the timer interrupt fires once `mtime` reaches `at`.
fn set_timer(hart: usize, at: u64) {
    let p = (CLINT + 0x4000 + 8 * hart) as *mut u32;
    // SAFETY: `mtimecmp[hart]` is this hart's CLINT register. The sequence of the privileged
    // spec for 32-bit harts: first make the low half maximal so that no intermediate value
    // is below `mtime`, then write the high half, then the low one.
    unsafe {
        ptr::write_volatile(p, u32::MAX);
        ptr::write_volatile(p.add(1), (at >> 32) as u32);
        ptr::write_volatile(p, at as u32);
    }
}

/// Ends the emulation: QEMU exits with 0 for `None`, with `code` otherwise.
fn finish(code: Option<u16>) -> ! {
    let value = match code {
        None => 0x5555,
        Some(code) => (u32::from(code) << 16) | 0x3333,
    };
    // SAFETY: the SiFive test finisher of the virt machine; writing it stops the machine.
    unsafe { ptr::write_volatile(TEST_DEVICE as *mut u32, value) };
    loop {
        riscv::asm::wfi();
    }
}

/// The UART, one character at a time (16550: THR at +0, LSR at +5 with THRE in bit 5).
struct Uart;

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the virt machine's NS16550A; polling LSR and writing THR have no other
            // effects than sending the byte.
            unsafe {
                while ptr::read_volatile((UART + 5) as *const u8) & 0x20 == 0 {}
                ptr::write_volatile(UART as *mut u8, b);
            }
        }
        Ok(())
    }
}

/// Prints a line, whole: the harts share the UART, so lines are written under the critical
/// section.
macro_rules! println {
    ($($arg:tt)*) => {
        critical_section::with(|_| {
            let _ = writeln!(Uart, $($arg)*);
        })
    };
}

// ---------------------------------------------------------------------------------------------
// Critical sections across harts: interrupts off on this hart, plus one spin lock.

struct HartsLock;
critical_section::set_impl!(HartsLock);

const NO_HART: usize = usize::MAX;
/// The hart holding the lock, or `NO_HART`.
static CS_OWNER: AtomicUsize = AtomicUsize::new(NO_HART);

/// Bit 0 of the restore state: interrupts were enabled on entry.
const CS_IRQS_WERE_ON: u8 = 1;
/// Bit 1: this acquire took the lock (the outermost one on this hart).
const CS_TOOK_LOCK: u8 = 2;

// SAFETY: `acquire` masks interrupts on this hart first, so nothing else on this hart runs
// until `release`; other harts are kept out by `CS_OWNER`, which only the holder clears. A
// nested acquire on the holding hart sees its own id and takes nothing, so nesting is
// allowed as critical-section requires, and the outermost release gives the lock back and
// restores interrupts.
unsafe impl critical_section::Impl for HartsLock {
    unsafe fn acquire() -> critical_section::RawRestoreState {
        let mstatus: usize;
        // SAFETY: clears mstatus.MIE and returns the old mstatus. Not `nomem`: it must act
        // as a compiler barrier, so that no access moves out of the critical section.
        unsafe { asm!("csrrci {}, mstatus, 8", out(reg) mstatus) };
        let mut state = if mstatus & 8 != 0 { CS_IRQS_WERE_ON } else { 0 };
        let me = hart_id();
        // ORDERING: Relaxed; only this hart ever stores its own id, so reading it means this
        // hart holds the lock already (a nested critical section).
        if CS_OWNER.load(Ordering::Relaxed) != me {
            // ORDERING: Acquire pairs with the Release store in `release` of the previous
            // holder, so its accesses inside the section happen before ours.
            while CS_OWNER.compare_exchange_weak(NO_HART, me, Ordering::Acquire, Ordering::Relaxed).is_err() {
                core::hint::spin_loop();
            }
            state |= CS_TOOK_LOCK;
        }
        state
    }

    unsafe fn release(state: critical_section::RawRestoreState) {
        if state & CS_TOOK_LOCK != 0 {
            // ORDERING: Release pairs with the Acquire CAS in `acquire` of the next holder.
            CS_OWNER.store(NO_HART, Ordering::Release);
        }
        if state & CS_IRQS_WERE_ON != 0 {
            // SAFETY: sets mstatus.MIE again, as it was on entry. A compiler barrier, as in
            // `acquire`.
            unsafe { asm!("csrsi mstatus, 8") };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The heap.

#[global_allocator]
static HEAP: LlffHeap = LlffHeap::empty();

unsafe extern "C" {
    /// Size of the heap region, from memory.x (the symbol's address is the value).
    static _heap_size: u8;
}

// ---------------------------------------------------------------------------------------------
// Start-up of the other harts.
//
// riscv-rt calls `_mp_hook` on every hart with the stack set up: hart 0 returns true and
// initialises RAM; the others wait here for a software interrupt (CLINT `msip`), which hart 0
// sends from `main` once RAM is initialised, then return false and go to `main` too. With
// mie.MSIE set and mstatus.MIE clear, `wfi` wakes on the pending interrupt without taking
// it. Written in assembly, as riscv-rt requires (no RAM initialised yet, s0-s2 untouched).
global_asm!(
    r#"
    .section .text.mp_hook, "ax"
    .global _mp_hook
_mp_hook:
    beqz a0, 2f
    li t0, 0x02000000
    slli t1, a0, 2
    add t0, t0, t1
    csrsi mie, 8
1:  wfi
    csrr t1, mip
    andi t1, t1, 8
    beqz t1, 1b
    sw zero, 0(t0)
    csrci mie, 8
    li a0, 0
    ret
2:  li a0, 1
    ret
"#
);

/// Wakes hart `h` out of `_mp_hook`.
fn wake(h: usize) {
    // SAFETY: `msip[h]` of the CLINT; setting it raises hart h's software interrupt, which
    // `_mp_hook` waits for (and clears).
    unsafe { ptr::write_volatile((CLINT + 4 * h) as *mut u32, 1) };
}

// ---------------------------------------------------------------------------------------------
// Lifecycle observer: releases and frees per group id.

/// Ids the observer keeps a slot for (ids are dense: the run creates fewer).
const MAX_IDS: usize = 16 + MAX_ROUNDS;

static RELEASED: [AtomicU32; MAX_IDS] = [const { AtomicU32::new(0) }; MAX_IDS];
static FREED: [AtomicU32; MAX_IDS] = [const { AtomicU32::new(0) }; MAX_IDS];
/// Events for ids beyond `MAX_IDS` (a failure: the table was sized for the run).
static ID_OVERFLOW: AtomicU32 = AtomicU32::new(0);

struct Lifecycle;

impl Lifecycle {
    fn count(table: &[AtomicU32; MAX_IDS], id: GroupId) {
        match table.get(id.index()) {
            // ORDERING: Relaxed; counts, read by hart 0 after every other hart has finished
            // (the DONE flags' Release/Acquire order them).
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => ID_OVERFLOW.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl Observer for Lifecycle {
    fn released(&self, id: GroupId) {
        Self::count(&RELEASED, id);
    }
    fn freed(&self, id: GroupId) {
        Self::count(&FREED, id);
    }
}

// ---------------------------------------------------------------------------------------------
// What the harts share.

type Cpus = HartCpus;

/// Job slots: each holds the current group of one job, replaced by hart 0 as the run goes.
const JOB_SLOTS: usize = 6;

struct Shared {
    tree: Tree<Cpus>,
    /// Charged by every hart's main loop and every hart's timer interrupt; never offline
    /// until the tree goes.
    steady: Group<Cpus>,
    /// Parent of the job groups.
    jobs: Group<Cpus>,
    /// The current job groups; readers find them under a pinned guard.
    slots: [OwnerCell<Cpus>; JOB_SLOTS],
}

/// Published by hart 0 (a leaked box) before it wakes the other harts and starts the timers.
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(ptr::null_mut());
/// Set while harts should charge; cleared by hart 0 when the run is over.
static STORM: AtomicBool = AtomicBool::new(false);
/// Set by each hart once it has given back everything and dropped its participant.
static DONE: [AtomicBool; HARTS] = [const { AtomicBool::new(false) }; HARTS];
/// Set by each hart when it starts charging (hart 0 begins its control rounds after all).
static STARTED: [AtomicBool; HARTS] = [const { AtomicBool::new(false) }; HARTS];

fn shared() -> &'static Shared {
    // ORDERING: Acquire pairs with the Release store in `boot_main`, so the tree and
    // groups behind the pointer are initialised when read.
    let p = SHARED.load(Ordering::Acquire);
    assert!(!p.is_null(), "shared state published before use");
    // SAFETY: non-null means hart 0 published a leaked `Box<Shared>`; it is freed only after
    // every hart has set DONE (after which no hart touches it) and the timers are off.
    unsafe { &*p }
}

// ---------------------------------------------------------------------------------------------
// Per-hart statistics, written by each hart (or its interrupt handler) for its own index and
// read by hart 0 after the DONE flags.

struct Stats {
    charges: AtomicU32,
    uncharges: AtomicU32,
    refusals: AtomicU32,
    over_high: AtomicU32,
    /// Uncharges of a group that was offline by then.
    offline_uncharges: AtomicU32,
    ticks: AtomicU32,
    /// Ticks that arrived while the hart's main line was inside a chargetree call.
    nested: AtomicU32,
    irq_charges: AtomicU32,
    irq_refusals: AtomicU32,
}

static STATS: [Stats; HARTS] = [const {
    Stats {
        charges: AtomicU32::new(0),
        uncharges: AtomicU32::new(0),
        refusals: AtomicU32::new(0),
        over_high: AtomicU32::new(0),
        offline_uncharges: AtomicU32::new(0),
        ticks: AtomicU32::new(0),
        nested: AtomicU32::new(0),
        irq_charges: AtomicU32::new(0),
        irq_refusals: AtomicU32::new(0),
    }
}; HARTS];

fn add(a: &AtomicU32, n: u32) {
    // ORDERING: Relaxed; statistics, read after the DONE flags' Release/Acquire.
    a.fetch_add(n, Ordering::Relaxed);
}

fn read(a: &AtomicU32) -> u32 {
    // ORDERING: Relaxed; see `add`.
    a.load(Ordering::Relaxed)
}

/// Set by each hart's main line around its calls into chargetree, read by its own handler.
static IN_CALL: [AtomicBool; HARTS] = [const { AtomicBool::new(false) }; HARTS];

fn in_call<R>(hart: usize, f: impl FnOnce() -> R) -> R {
    IN_CALL[hart].store(true, Ordering::Relaxed);
    // ORDERING: a compiler fence orders the flag against the call for this hart's own
    // interrupt handler (a same-hart observer, what `compiler_fence` is for).
    compiler_fence(Ordering::SeqCst);
    let r = f();
    compiler_fence(Ordering::SeqCst);
    IN_CALL[hart].store(false, Ordering::Relaxed);
    r
}

fn xorshift(mut x: u32) -> u32 {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

// ---------------------------------------------------------------------------------------------
// The timer interrupt.

/// Timer period in `mtime` ticks (10 MHz): 20 µs.
const TIMER_PERIOD: u64 = 200;

/// Units each hart's handler holds of `steady`, one entry per slot (0 = free). Only the
/// hart's handler touches its row while the timer runs; the hart's main line returns them
/// after switching the timer off.
static IRQ_LEDGER: [[AtomicUsize; 8]; HARTS] = [const { [const { AtomicUsize::new(0) }; 8] }; HARTS];
static IRQ_RNG: [AtomicU32; HARTS] = [const { AtomicU32::new(0x2545_f491) }; HARTS];

#[riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineTimer)]
fn machine_timer() {
    let h = hart_id();
    set_timer(h, mtime() + TIMER_PERIOD);
    let stats = &STATS[h];
    add(&stats.ticks, 1);
    // ORDERING: Relaxed; written by this hart's main line, ordered by its compiler fences.
    if IN_CALL[h].load(Ordering::Relaxed) {
        add(&stats.nested, 1);
    }
    // ORDERING: Relaxed; a stop signal, nothing is published through it (the handler's
    // state is only returned after the timer is off).
    if !STORM.load(Ordering::Relaxed) {
        return;
    }
    let steady = &shared().steady;
    // ORDERING: Relaxed; the handler's own state (one writer: this hart's handler).
    let r = xorshift(IRQ_RNG[h].load(Ordering::Relaxed));
    IRQ_RNG[h].store(r, Ordering::Relaxed);
    let entry = &IRQ_LEDGER[h][(r >> 8) as usize % 8];
    let held = entry.load(Ordering::Relaxed);
    if held != 0 {
        steady.uncharge(held);
        entry.store(0, Ordering::Relaxed);
        return;
    }
    let n = 1 + (r >> 16) as usize % 6;
    // An interrupt handler must not wait for reclaim or drains: fail instead.
    match steady.charge_with(n, ChargeOptions::DEFAULT.no_reclaim()) {
        Ok(_) => {
            entry.store(n, Ordering::Relaxed);
            add(&stats.irq_charges, 1);
        }
        Err(ChargeFailure::Limit { .. }) => add(&stats.irq_refusals, 1),
        Err(other) => panic!("hart {h}: timer charge: {other}"),
    }
}

fn start_timer(h: usize) {
    set_timer(h, mtime() + TIMER_PERIOD);
    // SAFETY: enables this hart's machine-timer interrupt and interrupts globally. The
    // handler only touches state meant for it (see `machine_timer`).
    unsafe {
        riscv::register::mie::set_mtimer();
        riscv::interrupt::enable();
    }
}

/// Switches this hart's timer interrupt off; when it returns, no handler runs on this hart
/// (one that was under way has finished: it ran to completion before this code resumed).
fn stop_timer() {
    riscv::interrupt::disable();
    // SAFETY: disables this hart's machine-timer interrupt; nothing depends on it anymore.
    unsafe { riscv::register::mie::clear_mtimer() };
}

// ---------------------------------------------------------------------------------------------
// A hart's charging loop.

/// Entries a hart's main line holds at once.
const LEDGER: usize = 24;

struct Worker {
    hart: usize,
    rng: u32,
    ledger: [Option<(Group<Cpus>, usize)>; LEDGER],
}

impl Worker {
    fn new(hart: usize) -> Self {
        Self {
            hart,
            rng: 0x9e37_79b9 ^ (hart as u32).wrapping_mul(0x85eb_ca6b),
            ledger: [const { None }; LEDGER],
        }
    }

    /// One random operation: give back an entry, or charge `steady` or a job group.
    fn step(&mut self, sh: &'static Shared, participant: &chargetree::epoch::Participant<'static>) {
        let stats = &STATS[self.hart];
        self.rng = xorshift(self.rng);
        let r = self.rng;
        let slot = (r >> 4) as usize % LEDGER;
        if self.ledger[slot].is_some() {
            if r & 3 != 0 {
                let (g, n) = self.ledger[slot].take().expect("checked");
                if !g.is_online() {
                    add(&stats.offline_uncharges, 1);
                }
                in_call(self.hart, || g.uncharge(n));
                add(&stats.uncharges, 1);
                // Dropping `g` puts the entry's reference (maybe the last one of an
                // offline job group: it is then released).
            }
            return;
        }
        let group = if r & 8 != 0 {
            sh.steady.clone()
        } else {
            let guard = participant.pin();
            // A durable handle (tryget under the guard): the slot may be switched to a new
            // group and the old one taken offline and released at any moment.
            let found = sh.slots[(r >> 8) as usize % JOB_SLOTS].get(&guard);
            drop(guard);
            found.expect("slots are switched, never emptied, during the storm")
        };
        let n = 1 + (r >> 20) as usize % 8;
        match in_call(self.hart, || group.try_charge(n)) {
            Ok(charged) => {
                if charged.over_high.is_some() {
                    add(&stats.over_high, 1);
                }
                self.ledger[slot] = Some((group, n));
                add(&stats.charges, 1);
            }
            Err(ChargeFailure::Limit { group: at, .. }) => {
                // The refusing group is the charged one or one of its ancestors.
                let mut on_path = false;
                let mut g = Some(group.clone());
                while let Some(x) = g {
                    if x.id() == at {
                        on_path = true;
                        break;
                    }
                    g = x.parent();
                }
                assert!(on_path, "hart {}: refusal by {at}, not on the charged path", self.hart);
                add(&stats.refusals, 1);
            }
            Err(other) => panic!("hart {}: {other}", self.hart),
        }
    }

    /// Gives back every entry (the timer is off by then).
    fn give_back(&mut self) {
        for entry in &mut self.ledger {
            if let Some((g, n)) = entry.take() {
                g.uncharge(n);
                add(&STATS[self.hart].uncharges, 1);
            }
        }
        for entry in &IRQ_LEDGER[self.hart] {
            // ORDERING: Relaxed; this hart's own handler wrote it, and is off now.
            let n = entry.swap(0, Ordering::Relaxed);
            if n != 0 {
                shared().steady.uncharge(n);
            }
        }
    }
}

/// What every hart but 0 does: charge until the storm is over, give everything back, park.
fn worker_main(h: usize) -> ! {
    let sh = shared();
    let participant = sh.tree.register();
    let mut w = Worker::new(h);
    start_timer(h);
    // ORDERING: Release/Acquire with hart 0's wait, which then knows this hart runs.
    STARTED[h].store(true, Ordering::Release);
    // ORDERING: Acquire pairs with hart 0's Release store of `false`; nothing else is read
    // through it, but it keeps the loop from being hoisted.
    while STORM.load(Ordering::Acquire) {
        w.step(sh, &participant);
    }
    stop_timer();
    w.give_back();
    drop(participant);
    drop(w);
    // ORDERING: Release: everything this hart did (uncharges, puts, statistics) happens
    // before hart 0's Acquire load of the flag.
    DONE[h].store(true, Ordering::Release);
    loop {
        riscv::asm::wfi();
    }
}

// ---------------------------------------------------------------------------------------------
// Hart 0.

/// Control rounds of hart 0: each replaces one job group and does some charging. The storm
/// lasts at least `MIN_ROUNDS` rounds and `STORM_SECS` of emulated time, and until every
/// hart's timer has interrupted a chargetree call, but at most `MAX_ROUNDS` rounds and
/// `STORM_MAX_SECS` (when the last condition is then still unmet, the run fails).
const MIN_ROUNDS: usize = 240;
const MAX_ROUNDS: usize = 60_000;
const STORM_SECS: u64 = 5;
const STORM_MAX_SECS: u64 = 20;
/// Charging steps of hart 0 per round.
const STEPS_PER_ROUND: usize = 200;
/// The stock's batch (the crate's default): a charge that misses the stock puts up to this
/// much more than it asks for on the counters, speculatively, before checking the limits.
const BATCH: usize = chargetree::stock::DEFAULT_BATCH;

const ROOT_MAX: usize = 448;
const STEADY_MAX: usize = 288;
const STEADY_HIGH: usize = 192;
const JOBS_MAX: usize = 192;
const JOB_MAX: usize = 48;

fn job_spec() -> GroupSpec<'static> {
    GroupSpec::new().name("job").max(JOB_MAX)
}

fn boot_main() -> ! {
    // SAFETY: hart 0 alone, before any allocation; the region is the heap of memory.x,
    // reserved by the linker script and used by nothing else.
    unsafe { HEAP.init(riscv_rt::heap_start() as usize, ptr::addr_of!(_heap_size) as usize) };
    let heap_before = HEAP.used();
    let start = mtime();
    println!("chargetree on {HARTS} harts of QEMU virt (riscv32imac), CpuProvider = mhartid");

    let tree = Tree::with_config(
        TreeConfig::with_cpus(HartCpus).root(GroupSpec::new().name("root").max(ROOT_MAX)).observer(Lifecycle),
    );
    let root = tree.root();
    let steady =
        root.create_child(GroupSpec::new().name("steady").max(STEADY_MAX).high(STEADY_HIGH)).unwrap();
    let jobs = root.create_child(GroupSpec::new().name("jobs").max(JOBS_MAX)).unwrap();
    let slots = core::array::from_fn(|_| OwnerCell::new(jobs.create_child(job_spec()).unwrap()));
    drop(root);
    let mut created = 3 + JOB_SLOTS; // root, steady, jobs, the first job groups
    let sh: &'static Shared = Box::leak(Box::new(Shared { tree, steady, jobs, slots }));
    // ORDERING: Relaxed; published to the other harts by the Release store of SHARED below
    // and to this hart's handler by program order.
    STORM.store(true, Ordering::Relaxed);
    // ORDERING: Release pairs with the Acquire load in `shared()`.
    SHARED.store(ptr::from_ref(sh).cast_mut(), Ordering::Release);
    for h in 1..HARTS {
        wake(h);
    }
    let participant = sh.tree.register();
    let mut w = Worker::new(0);
    start_timer(0);
    // ORDERING: Relaxed; read back by this hart only.
    STARTED[0].store(true, Ordering::Relaxed);
    // ORDERING: Acquire pairs with each hart's Release store.
    while !STARTED.iter().all(|s| s.load(Ordering::Acquire)) {
        core::hint::spin_loop();
    }

    let (mut drains, mut drained_units, mut busy_drains, mut replaced) = (0u32, 0usize, 0u32, 0u32);
    let (storm_until, storm_limit) = (start + STORM_SECS * MTIME_HZ, start + STORM_MAX_SECS * MTIME_HZ);
    let mut round = 0;
    while (round < MIN_ROUNDS || mtime() < storm_until || STATS.iter().any(|s| read(&s.nested) == 0))
        && round < MAX_ROUNDS
        && mtime() < storm_limit
    {
        for _ in 0..STEPS_PER_ROUND {
            w.step(sh, &participant);
        }
        // Replace one job: a new group in the slot, the old one offline while other harts may
        // still hold (and charge, and uncharge) it.
        let fresh = sh.jobs.create_child(job_spec()).unwrap();
        created += 1;
        let old = sh.slots[round % JOB_SLOTS].replace(Some(fresh)).expect("slots are never empty");
        in_call(0, || old.offline()).unwrap();
        drop(old);
        replaced += 1;
        if round % 3 == 0 {
            // Take every hart's cached units of the job groups, busy or idle.
            let target = if round % 2 == 0 { &sh.jobs } else { &sh.steady };
            match in_call(0, || sh.tree.drain_all(target)) {
                Some(units) => {
                    drains += 1;
                    drained_units += units;
                }
                None => busy_drains += 1, // another hart's charge was draining
            }
        }
        if round % 8 == 0 {
            sh.tree.reclaim();
        }
        round += 1;
    }
    // ORDERING: Release; the other harts stop charging when they see it.
    STORM.store(false, Ordering::Release);
    stop_timer();
    w.give_back();
    drop(participant);
    drop(w);
    let deadline = mtime() + 10 * MTIME_HZ;
    for (h, done) in DONE.iter().enumerate().skip(1) {
        // ORDERING: Acquire pairs with the Release store of hart h: its uncharges, puts and
        // statistics are visible from here on.
        while !done.load(Ordering::Acquire) {
            assert!(mtime() < deadline, "hart {h} did not finish within 10 s");
            core::hint::spin_loop();
        }
    }
    let storm_end = mtime();

    // Every hart is parked: the state is quiescent. Return every stocked unit, then every
    // counter must be at 0.
    let tail = sh.tree.drain_all(&sh.tree.root()).expect("nobody else drains now");
    let groups = sh.tree.groups();
    let mut peaks_over_max = 0;
    for g in &groups {
        let c = g.counter();
        assert_eq!(c.usage(), 0, "group {} ({:?}) balanced", g.id(), g.name());
        assert_eq!((c.underflows(), c.forgiven()), (0, 0), "group {}: no uncharge was clamped", g.id());
        // A peak is raised to the usage read after the charge's walk, which can include
        // other harts' speculative batches still in flight (added, not yet found over a
        // limit and withdrawn): so it may pass `max` by what the other harts and their
        // handlers can have in flight at once, never by more.
        let slack = 2 * HARTS * (BATCH + 8);
        assert!(
            c.peak() <= c.max() + slack,
            "group {}: peak {} above max {} + {slack}",
            g.id(),
            c.peak(),
            c.max()
        );
        if c.peak() > c.max() {
            peaks_over_max += 1;
        }
    }
    assert_eq!(groups.len(), 3 + JOB_SLOTS, "root, steady, jobs and the current jobs are online");
    drop(groups);
    assert_eq!(sh.steady.cached_units(), 0);
    let stats = sh.tree.stats();
    assert_eq!(stats.created, created, "groups created");
    assert_eq!(stats.offlined, replaced as usize, "groups offlined");
    assert_eq!(stats.forced, 0, "nothing was forced");

    // Report the harts.
    let (mut offline_uncharges, mut refusals) = (0, 0);
    for (h, s) in STATS.iter().enumerate() {
        println!(
            "hart {h}: {} charges, {} uncharges ({} of offline groups), {} refused, {} over high; \
             timer: {} ticks, {} inside a chargetree call, {} charges, {} refused",
            read(&s.charges),
            read(&s.uncharges),
            read(&s.offline_uncharges),
            read(&s.refusals),
            read(&s.over_high),
            read(&s.ticks),
            read(&s.nested),
            read(&s.irq_charges),
            read(&s.irq_refusals),
        );
        assert!(read(&s.charges) > 0 && read(&s.ticks) > 0 && read(&s.irq_charges) > 0, "hart {h} took part");
        assert!(read(&s.nested) > 0, "hart {h}: its timer interrupted a chargetree call (the nested path)");
        offline_uncharges += read(&s.offline_uncharges);
        refusals += read(&s.refusals) + read(&s.irq_refusals);
    }
    println!(
        "hart 0: {replaced} job groups replaced (offline while in use), {drains} drains returned {drained_units} units \
         ({busy_drains} found another drain under way), final drain {tail}"
    );
    if peaks_over_max > 0 {
        println!(
            "note: {peaks_over_max} online groups have a peak above their max (a speculative batch in flight)"
        );
    }
    assert!(offline_uncharges > 0, "some hart uncharged a group after it went offline");
    assert!(refusals > 0, "the limits refused some charges");
    assert!(drains > 0 && drained_units > 0, "drain_all took units from the stocks");

    // Tear down: empty the slots (their groups go offline), drop the handles and the tree.
    {
        // ORDERING: Relaxed; nobody reads it any more (see below).
        SHARED.store(ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: `sh` came from `Box::leak` above. Every other hart has set DONE and
        // parked, after which none touches the shared state, and this hart's participant and
        // timer handler are gone (the timer is off): nothing refers to the box any more.
        let shared_box = unsafe { Box::from_raw(ptr::from_ref(sh).cast_mut()) };
        // Moved out of the box, whose memory is freed at the end of this block (`boot_main`
        // never returns, so it must not be left to the end of the function).
        let Shared { tree, steady, jobs, slots } = *shared_box;
        for slot in &slots {
            let g = slot.replace(None).expect("slots are never empty");
            g.offline().unwrap();
        }
        drop((steady, jobs, slots));
        drop(tree);
    }

    // Every group was released and freed exactly once.
    assert_eq!(read(&ID_OVERFLOW), 0, "group ids beyond the observer's table");
    let mut problems = 0;
    for id in 0..MAX_IDS {
        let (r, f) = (read(&RELEASED[id]), read(&FREED[id]));
        let expected = u32::from(id < created);
        if (r, f) != (expected, expected) {
            problems += 1;
            if problems <= 8 {
                println!("group {id}: released {r} times, freed {f} times (expected {expected})");
            }
        }
    }
    assert_eq!(problems, 0, "groups not released and freed exactly once");
    assert_eq!(HEAP.used(), heap_before, "the heap is back where it was before the tree");
    let end = mtime();
    println!(
        "every counter balanced, all {created} groups released and freed once, heap back to {heap_before} bytes used; \
         storm {} ms, teardown {} ms (emulated time)",
        (storm_end - start) * 1000 / MTIME_HZ,
        (end - storm_end) * 1000 / MTIME_HZ
    );
    println!("PASS");
    finish(None)
}

#[riscv_rt::entry]
fn main() -> ! {
    let h = hart_id();
    if h == 0 { boot_main() } else { worker_main(h) }
}

// ---------------------------------------------------------------------------------------------
// Failures.

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    riscv::interrupt::disable();
    // Not through `println!`: another hart may hold the critical section forever if it
    // failed inside one; the line may then interleave with other output, which is fine.
    let _ = writeln!(Uart, "FAIL on hart {}: {info}", hart_id());
    finish(Some(1))
}

#[unsafe(export_name = "ExceptionHandler")]
extern "C" fn exception_handler(_frame: &riscv_rt::TrapFrame) -> ! {
    let (mcause, mepc, mtval): (usize, usize, usize);
    // SAFETY: reads three CSRs, touching no memory.
    unsafe {
        asm!("csrr {}, mcause", "csrr {}, mepc", "csrr {}, mtval",
            out(reg) mcause, out(reg) mepc, out(reg) mtval, options(nomem, nostack));
    }
    let _ = writeln!(
        Uart,
        "FAIL on hart {}: trap, mcause {mcause:#x} mepc {mepc:#010x} mtval {mtval:#010x}",
        hart_id()
    );
    finish(Some(3))
}

#[unsafe(export_name = "DefaultHandler")]
extern "C" fn default_handler() -> ! {
    let _ = writeln!(Uart, "FAIL on hart {}: unexpected interrupt", hart_id());
    finish(Some(3))
}
